"""The hand-written backward passes against autodiff: one config trained with model.impl=tuned
(jaxbench/kernels.py) and model.impl=reference (plain Flax with autodiff), alternated, side by
side in one run; the ratio is reference's median step time over tuned's.

  python benchmarks/kernels_impl.py [--config=configs/mpt.py:small] [--repeats=2] [--steps=20]
      [--set KEY=VALUE ...]

Each run is a `jaxbench train` process of its own (compile apart, warm-up steps left out), so the
figures are the CLI's. The memory column is the run's peak per device as summary.json records it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import common

IMPLS = ("tuned", "reference")


def train(spec: str, impl: str, steps: int, extra: list[str], workdir: str) -> dict:
  """summary.json of one `jaxbench train` run of `spec` with model.impl=`impl`."""
  args = [sys.executable, "-m", "jaxbench", "train", f"--config={spec}", f"--config.steps={steps}",
          f"--config.model.impl={impl}", f"--workdir={workdir}",
          *(f"--config.{kv}" for kv in extra)]
  env = {**os.environ, "PYTHONPATH": common.REPO}
  proc = subprocess.run(args, cwd=common.REPO, env=env, capture_output=True, text=True)
  if proc.returncode:
    raise SystemExit(f"{impl}: jaxbench train exited {proc.returncode}: "
                     f"{proc.stderr.strip().splitlines()[-1:]}")
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/mpt.py:small")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                      help="config overrides for both, e.g. dtype=bfloat16 model.remat=dots")
  a = parser.parse_args()
  print(common.header(f"model.impl: reference (autodiff) against tuned (kernels.py), {a.config}"))
  times = {impl: [] for impl in IMPLS}
  memory = {}
  with tempfile.TemporaryDirectory() as tmp:
    for repeat in range(a.repeats):
      for impl in IMPLS:
        s = train(a.config, impl, a.steps, a.set, os.path.join(tmp, f"{impl}-{repeat}"))
        times[impl].append(s["step_time_s_median"])
        memory[impl] = s.get("peak_memory_bytes_per_device")
  print("| impl | median step (ms), per repeat | peak memory (MiB) |")
  print("| --- | --- | --- |")
  for impl in IMPLS:
    print(f"| {impl} | {', '.join(f'{t * 1e3:.1f}' for t in times[impl])} | "
          f"{common.mib(memory[impl])} |")
  ratio = common.median(times["reference"]) / common.median(times["tuned"])
  print(f"\nreference / tuned step time: {ratio:.2f}x (medians over {a.repeats} repeats)")


if __name__ == "__main__":
  main()
