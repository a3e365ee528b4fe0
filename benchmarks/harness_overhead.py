"""What the harness costs: `jaxbench train`'s median step time against a bare loop calling the
same jitted step on the same config in the same process, alternated; target: within 2%.

  python benchmarks/harness_overhead.py [--config=configs/mpt.py:tiny] [--steps=30] [--repeats=4]

The bare loop is as lean as a loop can be: the batches are on the device before it starts, the
steps are dispatched back to back and the host waits once at the end (time / steps). The harness
is train.run(): data from its prefetch thread, metrics read every step, metrics.jsonl written,
progress lines; its figure is summary.json's step_time_s_median.

On a CPU the "device" is the same cores the loop's Python runs on, so every bit of host work the
harness does is paid for in CPU time; and on a shared machine CPU time per step is much steadier
than wall time. So both are compared: wall time, and the process's CPU time per step (for the
harness read between consecutive step records, for the bare loop over its timed steps).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import common
import jax

from jaxbench import data as data_lib
from jaxbench import program, rundir, runlog, sharding, train


def bare_loop(c, repeats_inner: int = 1):
  """A function that runs c.steps steps of the compiled train step and returns seconds per step."""
  s = program.build(c)
  state = program.init_state(s)
  data = data_lib.make(c, "train")
  batches = [jax.device_put(data.batch(i), s.batch_sharding) for i in range(c.steps)]
  with sharding.activation_mesh(s.mesh):
    step = program.jit_step(s).lower(state, batches[0]).compile()
  holder = {"state": state}

  def run() -> float:
    state = holder["state"]
    warmup = c.warmup_steps_excluded
    for b in batches[:warmup]:
      state, metrics = step(state, b)
    jax.block_until_ready(state)
    t0, c0 = time.perf_counter(), time.process_time()
    for b in batches[warmup:]:
      state, metrics = step(state, b)
    jax.block_until_ready((state, metrics))
    holder["state"] = state
    n = c.steps - warmup
    return (time.perf_counter() - t0) / n, (time.process_time() - c0) / n

  def run_reading_metrics() -> float:
    """The bare loop, but reading each step's metrics once the next step is queued, as any loop
    that records a per-step loss must: seconds per step."""
    state = holder["state"]
    warmup = c.warmup_steps_excluded
    for b in batches[:warmup]:
      state, metrics = step(state, b)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for b in batches[warmup:]:
      state, next_metrics = step(state, b)
      jax.device_get(metrics)
      metrics = next_metrics
    jax.device_get(metrics)
    holder["state"] = state
    return (time.perf_counter() - t0) / (c.steps - warmup)

  return run, run_reading_metrics


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
  bare, bare_reading = bare_loop(c)
  # The CPU time at each step record of the harness (a probe around the loop's own call).
  marks = []
  record = runlog.step_record

  def probed(*a, **k):
    marks.append(time.process_time())
    return record(*a, **k)

  runlog.step_record = probed
  harness, loop, harness_cpu, loop_cpu, harness_mean, reading = [], [], [], [], [], []
  for r in range(args.repeats):
    marks.clear()
    with tempfile.TemporaryDirectory() as tmp:
      summary = train.run(c, f"{tmp}/run")
      records = rundir.read_metrics(f"{tmp}/run/metrics.jsonl")[c.warmup_steps_excluded:]
    harness_mean.append(sum(r["step_time_s"] for r in records) / len(records))
    timed = marks[c.warmup_steps_excluded - 1:]  # differences: the timed steps' CPU time
    harness.append(summary["step_time_s_median"])
    harness_cpu.append(common.median([b - a for a, b in zip(timed, timed[1:])]))
    wall, cpu = bare()
    loop.append(wall)
    loop_cpu.append(cpu)
    reading.append(bare_reading())
    print(f"  repeat {r}: wall: harness median {harness[-1] * 1e3:.2f} ms/step (mean "
          f"{harness_mean[-1] * 1e3:.2f}), bare loop reading metrics {reading[-1] * 1e3:.2f}, bare "
          f"loop {loop[-1] * 1e3:.2f} ms/step, ratio {harness[-1] / loop[-1]:.4f};  CPU: harness "
          f"{harness_cpu[-1] * 1e3:.2f} ms/step, bare {loop_cpu[-1] * 1e3:.2f} ms/step, ratio "
          f"{harness_cpu[-1] / loop_cpu[-1]:.4f}", flush=True)
  runlog.step_record = record
  for name, h_list, b_list in (("wall", harness, loop), ("CPU", harness_cpu, loop_cpu),
                               ("wall, harness mean", harness_mean, loop),
                               ("wall, bare loop reading metrics", reading, loop)):
    h, b = common.median(h_list), common.median(b_list)
    ratio = common.median([x / y for x, y in zip(h_list, b_list)])
    print(f"\n{name} time: harness {h * 1e3:.2f} ms/step, bare loop {b * 1e3:.2f} ms/step: "
          f"harness / bare = {h / b:.4f} (median of per-repeat ratios {ratio:.4f}; "
          f"target <= 1.02: {'met' if ratio <= 1.02 else 'NOT met'})")


if __name__ == "__main__":
  main()
