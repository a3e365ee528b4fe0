"""The train step's own matmuls, XLA against PyTorch: every dot of one training step (forward,
backward and loss, as the compiled step runs them: jaxbench.hlo.dots reads its optimized HLO),
each distinct one timed alone by XLA (jax.lax.dot_general, jitted) and by PyTorch (torch.einsum
of the same contraction), the two alternated call by call in one process.

  python benchmarks/matmul_shapes.py [--config=configs/mpt.py:small] [--dtype=float32] \
      [--batch_size=N] [--repeats=15] [--inner=0] [--markdown]

It answers how much of a step's gap to the PyTorch twin is the matmul library rather than the
model: the table gives each contraction's rate under both, and the step's matmul time if every
one ran at that rate (count x median time). A dot in a loop body (the scan over layers) counts
once per trip. The copies XLA adds around a dot in the step (operands written transposed) are
not in its time here; each side runs its own library's best form of the contraction. On a GPU
(JAX's CUDA or ROCm backend, PyTorch on the same card) each timing is of 20 calls back to back,
then the device waited for, and float32 matmuls run as the twin runs them
(torch.float32_matmul_precision, TF32 by default as XLA's). torch.einsum writes its inputs'
dtype: where XLA's dot takes bfloat16 and writes float32, PyTorch's writes bfloat16.
"""

from __future__ import annotations

import argparse
import statistics
import time

import common

import jax
import numpy as np

from jaxbench import hlo


def time_pair(key, repeats: int, inner: int, device: str):
  """Median seconds of one call under XLA and under PyTorch (on `device`), alternated: each
  repeat times `inner` calls of one back to back, waited for at the end, then of the other."""
  import torch
  lhs_shape, rhs_shape, dims, lhs_dtype, rhs_dtype, out_dtype = key
  rng = np.random.default_rng(0)
  a = rng.standard_normal(lhs_shape, dtype=np.float32)
  b = rng.standard_normal(rhs_shape, dtype=np.float32)
  xa, xb = jax.numpy.asarray(a, lhs_dtype), jax.numpy.asarray(b, rhs_dtype)
  f = jax.jit(lambda x, y: jax.lax.dot_general(x, y, dims, preferred_element_type=out_dtype))
  spec = hlo.einsum_spec(len(lhs_shape), len(rhs_shape), dims)
  ta = torch.from_numpy(a).to(device=device, dtype=getattr(torch, lhs_dtype))
  tb = torch.from_numpy(b).to(device=device, dtype=getattr(torch, rhs_dtype))
  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  ours, theirs = f(xa, xb).block_until_ready(), torch.einsum(spec, ta, tb)
  scale = np.sqrt(np.prod([lhs_shape[i] for i in dims[0][0]]))
  np.testing.assert_allclose(np.asarray(ours, np.float32), theirs.float().cpu().numpy(),
                             rtol=0.05, atol=0.05 * scale)  # the same contraction, both sides
  xla, pt = [], []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(inner):
      out = f(xa, xb)
    out.block_until_ready()
    t1 = time.perf_counter()
    for _ in range(inner):
      torch.einsum(spec, ta, tb)
    sync()
    xla.append((t1 - t0) / inner)
    pt.append((time.perf_counter() - t1) / inner)
  return statistics.median(xla), statistics.median(pt)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/mpt.py:small")
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--batch_size", type=int, default=0, help="0: the preset's")
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument("--inner", type=int, default=0,
                      help="calls per timing, back to back (0: 1 on a CPU, 20 on a GPU)")
  parser.add_argument("--markdown", action="store_true")
  args = parser.parse_args()
  import torch

  device = "cpu"
  if jax.default_backend() == "gpu":
    if not torch.cuda.is_available():
      parser.error("JAX runs on a GPU here but PyTorch sees none: nothing to compare against")
    device = "cuda"
  elif jax.default_backend() != "cpu":
    parser.error(f"JAX runs on {jax.default_backend()}; PyTorch can only be timed on a CPU or GPU")
  inner = args.inner or (20 if device == "cuda" else 1)

  from jaxbench import compile as compile_lib, data as data_lib, program

  overrides = {"batch_size": args.batch_size} if args.batch_size else {}
  c = common.load(args.config, dtype=args.dtype, **overrides)
  if device == "cuda":  # float32 as the twin multiplies it (TF32 by default, as XLA's dots)
    torch.set_float32_matmul_precision(c.torch.float32_matmul_precision)
  s = program.build(c)
  batch = jax.device_put(data_lib.make(c, "train").batch(0), s.batch_sharding)
  text = program.lower_step(s, program.abstract_state(s), batch).compile().as_text()
  census = hlo.dots(text)
  fused = sum(n for kind, n in compile_lib.kernel_report(text).items()
              if kind.startswith("cuDNN attention"))
  untripped = hlo.loops_without_trip_count(text)
  print(common.header("benchmarks/matmul_shapes.py")
        + f"\ntorch {torch.__version__} on {device} ({torch.get_num_threads()} threads)  config "
        f"{args.config} batch {c.batch_size} {args.dtype}, {len(census)} distinct dots, "
        f"{sum(census.values())} a step, {args.repeats} alternated timings of {inner} call(s)"
        + (f"\n(and {fused} cuDNN fused-attention call sites: their matmuls are not dots, not "
           "timed here)" if fused else "")
        + (f"\n(and {untripped} loop(s) of no known trip count: their dots counted once)"
           if untripped else ""))
  sep = "|" if args.markdown else " "
  print(f"\n{sep} contraction (einsum, shapes) {sep} dtypes {sep} calls/step {sep} XLA GFLOP/s "
        f"{sep} torch GFLOP/s {sep} XLA speed / torch {sep} XLA ms/step {sep} torch ms/step {sep}")
  if args.markdown:
    print("|---|---|---|---|---|---|---|---|")
  rows = []  # each printed once measured, the most FLOPs a step first
  for key, count in sorted(census.items(), key=lambda kv: -hlo.dot_flops(*kv[0][:3]) * kv[1]):
    (lhs, rhs, dims, ld, rd, od), fl = key, hlo.dot_flops(*key[:3])
    xs, ts = time_pair(key, args.repeats, inner, device)
    rows.append((count, fl, xs, ts))
    name = f"{hlo.einsum_spec(len(lhs), len(rhs), dims)} {list(lhs)} x {list(rhs)}"
    print(f"{sep} {name} {sep} {ld},{rd}->{od} {sep} {count} {sep} {fl / xs / 1e9:.0f} {sep} "
          f"{fl / ts / 1e9:.0f} {sep} {ts / xs:.2f}x {sep} {count * xs * 1e3:.1f} {sep} "
          f"{count * ts * 1e3:.1f} {sep}", flush=True)
  total_x = sum(count * xs for count, _, xs, _ in rows)
  total_t = sum(count * ts for count, _, _, ts in rows)
  total_f = sum(count * fl for count, fl, _, _ in rows)
  print(f"\nall {sum(census.values())} dots of a step: XLA {total_x * 1e3:.0f} ms "
        f"({total_f / total_x / 1e9:.0f} GFLOP/s), torch {total_t * 1e3:.0f} ms "
        f"({total_f / total_t / 1e9:.0f} GFLOP/s): XLA's at {total_t / total_x:.2f}x torch's speed")


if __name__ == "__main__":
  main()
