"""What the harness costs: `jaxbench train`'s median step time against a bare loop calling the
same jitted step on the same config in the same process, alternated; target: within 2%.

  python benchmarks/harness_overhead.py [--config=configs/mpt.py:tiny] [--steps=30] [--repeats=4]

The bare loop is as lean as a loop can be: the batches are on the device before it starts, the
steps are dispatched back to back and the host waits once at the end (time / steps). The harness
is train.run(): data from its prefetch thread, metrics read every step, metrics.jsonl written,
progress lines; its figure is summary.json's step_time_s_median.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import common
import jax

from jaxbench import data as data_lib
from jaxbench import sharding, train


def bare_loop(c, repeats_inner: int = 1):
  """A function that runs c.steps steps of the compiled train step and returns seconds per step."""
  s = train.build(c)
  state = train.init_state(s)
  data = data_lib.make(c, "train")
  batches = [jax.device_put(data.batch(i), s.batch_sharding) for i in range(c.steps)]
  with sharding.activation_mesh(s.mesh):
    step = train.jit_step(s).lower(state, batches[0]).compile()
  holder = {"state": state}

  def run() -> float:
    state = holder["state"]
    warmup = c.warmup_steps_excluded
    for b in batches[:warmup]:
      state, metrics = step(state, b)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for b in batches[warmup:]:
      state, metrics = step(state, b)
    jax.block_until_ready((state, metrics))
    holder["state"] = state
    return (time.perf_counter() - t0) / (c.steps - warmup)

  return run


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/mpt.py:tiny")
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--repeats", type=int, default=4)
  args = parser.parse_args()
  print(common.header("benchmarks/harness_overhead.py")
        + f"\nconfig {args.config}, {args.steps} steps per run, first 3 not timed")
  c = common.load(args.config, steps=args.steps, warmup_steps_excluded=3, log_every=0,
                  peak_tflops=1.0)
  bare = bare_loop(c)
  harness, loop = [], []
  for r in range(args.repeats):
    with tempfile.TemporaryDirectory() as tmp:
      summary = train.run(c, f"{tmp}/run")
    harness.append(summary["step_time_s_median"])
    loop.append(bare())
    print(f"  repeat {r}: harness median {harness[-1] * 1e3:.2f} ms/step, bare loop "
          f"{loop[-1] * 1e3:.2f} ms/step, ratio {harness[-1] / loop[-1]:.4f}", flush=True)
  h, b = common.median(harness), common.median(loop)
  ratios = sorted(x / y for x, y in zip(harness, loop))
  print(f"\nharness {h * 1e3:.2f} ms/step, bare loop {b * 1e3:.2f} ms/step: harness / bare = "
        f"{h / b:.4f} (median of per-repeat ratios {common.median(ratios):.4f}; "
        f"target <= 1.02: {'met' if common.median(ratios) <= 1.02 else 'NOT met'})")


if __name__ == "__main__":
  main()
