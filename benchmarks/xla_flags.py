"""XLA_FLAGS side by side: the same train step timed under each set of flags, each in its own
process (XLA reads its flags once, when the backend starts), the processes alternated.

  python benchmarks/xla_flags.py [--config=configs/mpt.py:small] [--dtype=float32] [--rounds=2] \
      [--variants="|--xla_cpu_experimental_ynn_fusion_type=-REDUCE"]

Variants are separated by '|'; the empty one is jaxbench's default. Each child compiles the step,
runs one step untimed, then times --steps steps (each waited for): wall time, and the CPU time
the process used (all threads), which a shared machine's load disturbs much less.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import common

CHILD = r"""
import json, sys, time
sys.path.insert(0, {repo!r})
import jax
from jaxbench import config as config_lib, data as data_lib, program, sharding
c = config_lib.load_config_file({config!r}); c.dtype = {dtype!r}
s = program.build(c); state = program.init_state(s)
batch = jax.device_put(data_lib.make(c, "train").batch(0), s.batch_sharding)
with sharding.activation_mesh(s.mesh):
  step = program.jit_step(s).lower(state, batch).compile()
state, m = step(state, batch); jax.block_until_ready(m)
times = []
for _ in range({steps}):
  t0, c0 = time.perf_counter(), time.process_time()
  state, m = step(state, batch); jax.block_until_ready(m)
  times.append((time.perf_counter() - t0, time.process_time() - c0))
print("RESULT " + json.dumps(times))
"""


def run_child(flags: str, config: str, dtype: str, steps: int) -> list[float]:
  env = dict(os.environ)
  base = env.get("XLA_FLAGS", "")
  env["XLA_FLAGS"] = " ".join(x for x in (base, flags) if x)
  env.setdefault("JAX_PLATFORMS", "cpu")
  code = CHILD.format(repo=common.REPO, config=config, dtype=dtype, steps=steps)
  proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
  for line in proc.stdout.splitlines():
    if line.startswith("RESULT "):
      return json.loads(line[len("RESULT "):])
  raise RuntimeError(f"child with XLA_FLAGS={flags!r} failed:\n{proc.stderr[-3000:]}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/mpt.py:small")
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument("--variants", default="|--xla_cpu_experimental_ynn_fusion_type=-REDUCE")
  args = parser.parse_args()
  variants = args.variants.split("|")
  print(common.header("benchmarks/xla_flags.py")
        + f"\nconfig {args.config} {args.dtype}, {args.rounds} rounds x {args.steps} steps")
  times = {v: [] for v in variants}
  for r in range(args.rounds):
    for v in variants:
      t0 = time.perf_counter()
      times[v] += run_child(v, args.config, args.dtype, args.steps)
      print(f"  round {r} [{v or 'default'}]: wall/cpu "
            + " ".join(f"{w * 1e3:.0f}/{c * 1e3:.0f}" for w, c in times[v][-args.steps:])
            + f" ms  ({time.perf_counter() - t0:.0f}s with compile)", flush=True)
  wall0 = common.median([w for w, _ in times[variants[0]]])
  cpu0 = common.median([c for _, c in times[variants[0]]])
  print("\n| XLA_FLAGS added | median wall ms/step | speed vs first (wall) | median CPU ms/step "
        "| speed vs first (CPU time) |")
  print("|---|---|---|---|---|")
  for v in variants:
    wall = common.median([w for w, _ in times[v]])
    cpu = common.median([c for _, c in times[v]])
    print(f"| {v or '(none)'} | {wall * 1e3:.0f} | {wall0 / wall:.2f}x | {cpu * 1e3:.0f} | "
          f"{cpu0 / cpu:.2f}x |")


if __name__ == "__main__":
  main()
