"""Compile time against depth: with scan_layers a 48-layer model should compile in at most 1.5x the
time of a 4-layer one (the layer body is compiled once); unrolled figures beside.

  python benchmarks/compile_depth.py [--config=configs/mpt.py:tiny] [--repeats=3] [--no_unrolled]

Times are lowering + XLA compilation of the full train step (forward, backward, AdamW), what a run
reports as compile_s, for this machine's devices. The cases alternate, repeated, medians reported.
"""

from __future__ import annotations

import argparse
import time

import common
import jax

from jaxbench import program


def compile_time(spec: str, n_layers: int, scan: bool) -> tuple[float, float]:
  """(lower seconds, compile seconds) of a fresh train step."""
  c = common.load(spec, model__n_layers=n_layers, model__scan_layers=scan)
  s = program.build(c)
  state = program.abstract_state(s)
  batch = jax.ShapeDtypeStruct((c.microbatches, c.batch_size // c.microbatches, c.seq_len + 1),
                               jax.numpy.int32, sharding=s.batch_sharding)
  t0 = time.perf_counter()
  lowered = program.lower_step(s, state, batch)
  t1 = time.perf_counter()
  lowered.compile()
  return t1 - t0, time.perf_counter() - t1


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/mpt.py:tiny")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--depths", default="4,48")
  parser.add_argument("--no_unrolled", action="store_true")
  args = parser.parse_args()
  depths = [int(d) for d in args.depths.split(",")]
  print(common.header("benchmarks/compile_depth.py") + f"\nconfig {args.config}")
  compile_time("configs/mpt.py:nano", 2, True)  # one-time costs of the first compile, not timed
  cases = [(d, True) for d in depths] + ([] if args.no_unrolled else [(d, False) for d in depths])
  results = {case: [] for case in cases}
  for r in range(args.repeats):
    for case in cases:
      if not case[1] and r > 0 and case[0] == max(depths):
        continue  # the deep unrolled compile is slow: once is enough to show the trend
      lower_s, compile_s = compile_time(args.config, *case)
      results[case].append(lower_s + compile_s)
      print(f"  repeat {r}: {case[0]:>3} layers, {'scan    ' if case[1] else 'unrolled'}: "
            f"lower {lower_s:.2f}s + compile {compile_s:.2f}s", flush=True)
  print("\n| layers | scan_layers=True (s) | unrolled (s) |")
  print("|---|---|---|")
  for d in depths:
    unrolled = common.median(results.get((d, False), []))
    print(f"| {d} | {common.median(results[(d, True)]):.2f} | "
          f"{'n/a' if args.no_unrolled else f'{unrolled:.2f}'} |")
  lo, hi = min(depths), max(depths)
  ratio = common.median(results[(hi, True)]) / common.median(results[(lo, True)])
  print(f"\nscan: {hi} layers / {lo} layers = {ratio:.2f}x (target <= 1.5x: "
        f"{'met' if ratio <= 1.5 else 'NOT met'})")
  if not args.no_unrolled:
    unrolled_ratio = common.median(results[(hi, False)]) / common.median(results[(lo, False)])
    print(f"unrolled: {hi} layers / {lo} layers = {unrolled_ratio:.2f}x")


if __name__ == "__main__":
  main()
