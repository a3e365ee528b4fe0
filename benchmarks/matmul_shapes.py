"""The train step's own matmuls, XLA against PyTorch: every dot of one training step (forward,
backward and loss, as the compiled step runs them: jaxbench.hlo.dots reads its optimized HLO),
each distinct one timed alone by XLA (jax.lax.dot_general, jitted) and by PyTorch (torch.einsum
of the same contraction), the two alternated call by call in one process.

  python benchmarks/matmul_shapes.py [--config=configs/mpt.py:small] [--dtype=float32] \
      [--repeats=15] [--markdown]

It answers how much of a step's gap to the PyTorch twin is the matmul library rather than the
model: the table gives each contraction's rate under both, and the step's matmul time if every
one ran at that rate (count x median time). A dot in a loop body (the scan over layers) counts
once per trip. The copies XLA adds around a dot in the step (operands written transposed) are
not in its time here; each side runs its own library's best form of the contraction.
"""

from __future__ import annotations

import argparse
import statistics
import string
import time

import common

import jax
import numpy as np



def einsum_spec(lhs_rank: int, rhs_rank: int, dims) -> str:
  """The einsum string of a dot_general: batch dims, then lhs free, then rhs free (its order)."""
  (lc, rc), (lb, rb) = dims
  letters = iter(string.ascii_letters)
  lhs, rhs = [None] * lhs_rank, [None] * rhs_rank
  for i, j in zip(lb, rb):
    lhs[i] = rhs[j] = next(letters)
  for i, j in zip(lc, rc):
    lhs[i] = rhs[j] = next(letters)
  for arr in (lhs, rhs):
    for i, x in enumerate(arr):
      if x is None:
        arr[i] = next(letters)
  out = ([lhs[i] for i in lb] + [x for i, x in enumerate(lhs) if i not in lb and i not in lc]
         + [x for i, x in enumerate(rhs) if i not in rb and i not in rc])
  return f"{''.join(lhs)},{''.join(rhs)}->{''.join(out)}"


def time_pair(key, repeats: int):
  """Median seconds of one call under XLA and under PyTorch, alternated call by call."""
  import torch
  lhs_shape, rhs_shape, dims, lhs_dtype, rhs_dtype, out_dtype = key
  rng = np.random.default_rng(0)
  a = rng.standard_normal(lhs_shape, dtype=np.float32)
  b = rng.standard_normal(rhs_shape, dtype=np.float32)
  xa, xb = jax.numpy.asarray(a, lhs_dtype), jax.numpy.asarray(b, rhs_dtype)
  f = jax.jit(lambda x, y: jax.lax.dot_general(x, y, dims, preferred_element_type=out_dtype))
  spec = einsum_spec(len(lhs_shape), len(rhs_shape), dims)
  ta = torch.from_numpy(a).to(getattr(torch, lhs_dtype))
  tb = torch.from_numpy(b).to(getattr(torch, rhs_dtype))
  ours, theirs = f(xa, xb).block_until_ready(), torch.einsum(spec, ta, tb)
  scale = np.sqrt(np.prod([lhs_shape[i] for i in dims[0][0]]))
  np.testing.assert_allclose(np.asarray(ours, np.float32), theirs.float().numpy(),
                             rtol=0.05, atol=0.05 * scale)  # the same contraction, both sides
  xla, pt = [], []
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(xa, xb).block_until_ready()
    t1 = time.perf_counter()
    torch.einsum(spec, ta, tb)
    xla.append(t1 - t0)
    pt.append(time.perf_counter() - t1)
  return statistics.median(xla), statistics.median(pt)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/mpt.py:small")
  parser.add_argument("--dtype", default="float32")
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument("--markdown", action="store_true")
  args = parser.parse_args()
  import torch

  from jaxbench import data as data_lib, hlo, sharding, train

  c = common.load(args.config, dtype=args.dtype)
  s = train.build(c)
  state = train.init_state(s)
  batch = jax.device_put(data_lib.make(c, "train").batch(0), s.batch_sharding)
  with sharding.activation_mesh(s.mesh):
    census = hlo.dots(train.jit_step(s).lower(state, batch).compile().as_text())
  print(common.header("benchmarks/matmul_shapes.py")
        + f"\ntorch {torch.__version__} ({torch.get_num_threads()} threads)  config {args.config} "
        f"{args.dtype}, {len(census)} distinct dots, {sum(census.values())} a step, "
        f"{args.repeats} alternated calls each")
  rows = []
  for key, count in sorted(census.items(), key=lambda kv: -hlo.dot_flops(*kv[0][:3]) * kv[1]):
    xla_s, torch_s = time_pair(key, args.repeats)
    rows.append((key, count, hlo.dot_flops(*key[:3]), xla_s, torch_s))
  sep = "|" if args.markdown else " "
  print(f"\n{sep} contraction (einsum, shapes) {sep} dtypes {sep} calls/step {sep} XLA GFLOP/s "
        f"{sep} torch GFLOP/s {sep} XLA speed / torch {sep} XLA ms/step {sep} torch ms/step {sep}")
  if args.markdown:
    print("|---|---|---|---|---|---|---|---|")
  for (lhs, rhs, dims, ld, rd, od), count, fl, xs, ts in rows:
    name = f"{einsum_spec(len(lhs), len(rhs), dims)} {list(lhs)} x {list(rhs)}"
    print(f"{sep} {name} {sep} {ld},{rd}->{od} {sep} {count} {sep} {fl / xs / 1e9:.0f} {sep} "
          f"{fl / ts / 1e9:.0f} {sep} {ts / xs:.2f}x {sep} {count * xs * 1e3:.0f} {sep} "
          f"{count * ts * 1e3:.0f} {sep}")
  total_x = sum(count * xs for _, count, _, xs, _ in rows)
  total_t = sum(count * ts for _, count, _, _, ts in rows)
  total_f = sum(count * fl for _, count, fl, _, _ in rows)
  print(f"\nall {sum(census.values())} dots of a step: XLA {total_x * 1e3:.0f} ms "
        f"({total_f / total_x / 1e9:.0f} GFLOP/s), torch {total_t * 1e3:.0f} ms "
        f"({total_f / total_t / 1e9:.0f} GFLOP/s): XLA's at {total_t / total_x:.2f}x torch's speed")


if __name__ == "__main__":
  main()
