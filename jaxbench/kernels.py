"""The model's hand-written backward passes: seven custom-VJP kernels that model.py's layers call.

Each computes what autodiff of the plain expression computes, to rounding, and keeps less for the
backward pass or runs faster on XLA's backends: matmul, causal_attention, gelu, swiglu,
activated_matmul, normalize and normalized_matmuls. Why each is written as it is, with the
measurements behind it, is in docs/kernels.md, one section per kernel. Beside them, the same
functions in plain jnp for autodiff (reference_*): IMPLEMENTATIONS maps model.impl to one set.

Shared rules: a matmul accumulates in float32 and rounds once to the compute dtype (_einsum); a
weight comes in its float32 storage and is cast to the compute dtype in the forward and again in
the backward (_recast); a bfloat16 residual is kept as its bits (_kept). Pure functions of arrays;
no Flax, no mesh.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

# --- matmuls accumulated in float32 (docs/kernels.md, "Matmuls") --------------------------------


def _rounded(y, dtype, batched: bool):
  """A matmul's float32 result rounded to `dtype` and named for the remat policies that keep
  matmul results ("batched_matmul" or "matmul"), a bfloat16 one named as its bits (_kept)."""
  y = y.astype(dtype)
  return _restored(checkpoint_name(_kept(y), "batched_matmul" if batched else "matmul"))


def _einsum(spec: str, a, b):
  """jnp.einsum(spec, a, b) accumulated in float32 and rounded once to the operands' dtype, as a
  GPU's GEMM and PyTorch's bfloat16 matmul compute it."""
  operands, out = spec.split("->")
  sa, sb = operands.split(",")
  batched = any(i in sb and i in out for i in sa)
  return _rounded(jnp.einsum(spec, a, b, preferred_element_type=jnp.float32),
                  jnp.result_type(a, b), batched)


def _dot_general(a, b, dimension_numbers):
  """jax.lax.dot_general accumulated in float32 and rounded once, as _einsum."""
  return _rounded(jax.lax.dot_general(a, b, dimension_numbers, preferred_element_type=jnp.float32),
                  jnp.result_type(a, b), bool(dimension_numbers[1][0]))


def _recast(weights, dtype):
  """Weights kept for a backward pass in their float32 storage, cast to the compute dtype again
  there (behind a barrier, so XLA does not merge the cast with the forward's)."""
  return tuple(w.astype(dtype) for w in jax.lax.optimization_barrier(tuple(weights)))


def _kept(x):
  """A residual kept for a backward pass, a bfloat16 one as its bits (uint16; free), which a scan
  over layers stacks in place on XLA's CPU backend."""
  return jax.lax.bitcast_convert_type(x, jnp.uint16) if x.dtype == jnp.bfloat16 else x


def _restored(x):
  """The residual _kept(x) kept, as x (unchanged if it was not bfloat16)."""
  return jax.lax.bitcast_convert_type(x, jnp.bfloat16) if x.dtype == jnp.uint16 else x


def _weight_grad(x, g, rows: int):
  """A kernel's gradient: x [*tokens, *m] and the output gradient g [*tokens, *n], contracted
  over their `rows` leading (token) dims -> [*m, *n], accumulated in float32 and rounded once.
  One token dim is split in two and the smaller operand taken as the lhs, so that XLA's CPU
  backend runs it on its bfloat16 kernels (docs/kernels.md, "Weight gradients")."""
  if rows == 1:
    tokens = x.shape[0]
    factor = next((f for f in range(2, math.isqrt(tokens) + 1) if tokens % f == 0), None)
    if factor:
      x, g = (v.reshape(tokens // factor, factor, *v.shape[1:]) for v in (x, g))
      rows = 2
  r = tuple(range(rows))
  m, n = x.ndim - rows, g.ndim - rows
  if math.prod(x.shape[rows:]) <= math.prod(g.shape[rows:]):
    return _dot_general(x, g, ((r, r), ((), ())))
  swapped = _dot_general(g, x, ((r, r), ((), ())))
  return swapped.transpose(*range(n, n + m), *range(n))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def matmul(spec: str, x, weight, keep_bits: bool = False):
  """jnp.einsum(spec, x, weight.astype(x.dtype)) for a two-operand contraction (no index repeated
  within an operand), its forward and both backward matmuls accumulated in float32 and rounded
  once to x's dtype: autodiff's backward matmuls would ask XLA for bfloat16 results. The weight's
  gradient comes in its own (storage) dtype.

  keep_bits: keep x for the backward as _kept does; not where another op keeps the same x as it
  is (docs/kernels.md, "matmul")."""
  return _matmul_fwd(spec, x, weight, keep_bits)[0]


def _matmul_fwd(spec, x, weight, keep_bits):
  # Computed here, not by calling matmul: a custom VJP nested in its own forward hides the named
  # result from the remat policies (model.REMAT_POLICIES).
  return _einsum(spec, x, weight.astype(x.dtype)), (_kept(x) if keep_bits else x, weight)


def _matmul_bwd(spec, keep_bits, residuals, g):
  x, weight = residuals
  x = _restored(x)
  (w,) = _recast((weight,), x.dtype)
  operands, out = spec.split("->")
  sx, sw = operands.split(",")
  return (_einsum(f"{out},{sw}->{sx}", g, w),
          _einsum(f"{sx},{out}->{sw}", x, g).astype(weight.dtype))


matmul.defvjp(_matmul_fwd, _matmul_bwd)


# --- causal attention by query blocks (docs/kernels.md, "causal_attention") ----------------------

def query_block_rows(seq_len: int, block: int = 0) -> int:
  """Rows per query block of the causal attention: `block` if given (>= seq_len: one block),
  else a block of 64 rows, or an eighth of the sequence where that is more (at most 8 blocks;
  docs/kernels.md, "Query blocks")."""
  return min(seq_len, block if block > 0 else max(64, -(-seq_len // 8)))


def query_blocks(seq_len: int, rows: int) -> list[tuple[int, int]]:
  """(first row, rows) of each query block; a block's rows see the keys [0, first row + rows)."""
  return [(start, min(rows, seq_len - start)) for start in range(0, seq_len, rows)]


def scores_fraction(seq_len: int, rows: int) -> float:
  """The share of the full [S, S] scores the blocks compute (1 for one block)."""
  return sum(n * (start + n) for start, n in query_blocks(seq_len, rows)) / seq_len ** 2


def _attention_scores(q, k, bias, start: int = 0):
  """Scaled, biased, causally masked float32 scores [B, KV, G, R, C] of the head-major query rows
  [start, start + R) of q [B, KV, G, R, D] against the keys [0, C) of k [B, KV, C, D]."""
  _, kv, g, rows, d = q.shape
  cols = k.shape[2]
  q = q * jnp.asarray(1.0 / math.sqrt(d), q.dtype)
  scores = checkpoint_name(  # kept in float32 by the "dots" remat policy, as jax's would
      jnp.einsum("bkgsd,bktd->bkgst", q, k, preferred_element_type=jnp.float32), "batched_matmul")
  if bias is not None:
    s = bias.shape[-1]
    scores = scores + bias.reshape(kv, g, s, s)[:, :, start:start + rows, :cols]
  causal = jnp.tri(rows, cols, start, dtype=bool)
  return jnp.where(causal, scores, jnp.finfo(jnp.float32).min)


def _heads_major(q, k, v):
  """q [B, S, KV, G, D] -> [B, KV, G, S, D]; k, v [B, T, KV, D] -> [B, KV, T, D]."""
  return (jnp.transpose(q, (0, 2, 3, 1, 4)), jnp.transpose(k, (0, 2, 1, 3)),
          jnp.transpose(v, (0, 2, 1, 3)))


def _joined(blocks, axis: int):
  return blocks[0] if len(blocks) == 1 else jnp.concatenate(blocks, axis=axis)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def causal_attention(q, k, v, bias, rows: int):
  """softmax(q k^T / sqrt(D) + bias, causal) v for q [B, S, KV, G, D], k and v [B, T, KV, D],
  bias [H, S, T] or None; the probabilities rounded to v's dtype before the second matmul.

  By blocks of `rows` query rows (query_blocks), each against the keys it can see, skipping the
  scores above the diagonal. Its backward recomputes the scores from q and k and the
  probabilities from the saved log-normalizer (flash attention's backward): autodiff keeps every
  layer's [B, H, S, S] float32 probabilities. The matmuls run on head-major copies."""
  return _causal_attention_fwd(q, k, v, bias, rows)[0]


def _causal_attention_fwd(q, k, v, bias, rows):
  q, k, v = _heads_major(q, k, v)
  outs, lses = [], []
  for start, n in query_blocks(q.shape[3], rows):
    end = start + n
    scores = _attention_scores(q[:, :, :, start:end], k[:, :, :end], bias, start)
    top = jnp.max(scores, axis=-1, keepdims=True)
    unnormalized = jnp.exp(scores - top)
    total = jnp.sum(unnormalized, axis=-1, keepdims=True)
    probs = (unnormalized / total).astype(v.dtype)
    outs.append(_einsum("bkgst,bktd->bkgsd", probs, v[:, :, :end]))
    lses.append(top + jnp.log(total))
  out = _joined(outs, 3)
  return (jnp.transpose(out, (0, 3, 1, 2, 4)),
          (*map(_kept, (q, k, v)), bias, _kept(out), _joined(lses, 3)))


def _causal_attention_bwd(rows, residuals, g):
  q, k, v, bias, out, lse = residuals  # head-major
  q, k, v, out = map(_restored, (q, k, v, out))
  d, t = q.shape[-1], k.shape[2]
  g = jnp.transpose(g, (0, 2, 3, 1, 4))
  # The barrier keeps XLA from merging this recomputation with the forward's scores (CSE), which
  # kept every layer's [B, H, S, S] float32 scores until the backward (docs/kernels.md).
  q, k = jax.lax.optimization_barrier((q, k))
  scale = jnp.asarray(1.0 / math.sqrt(d), q.dtype)
  # Without unit dims in the row sums below: with one among its operands' dims XLA's CPU backend
  # (YNNPACK) ran that product-and-sum 6-40x slower. Only unit dims go: merging sharded dims
  # would cost all-gathers under a mesh.
  units = tuple(i for i, n in enumerate(g.shape[:-1]) if n == 1)
  dqs, dks, dvs, dbiases = [], [], [], []
  for start, n in query_blocks(q.shape[3], rows):
    end = start + n
    qb, gb, outb = (x[:, :, :, start:end] for x in (q, g, out))
    kb, vb = k[:, :, :end], v[:, :, :end]
    probs = jnp.exp(_attention_scores(qb, kb, bias, start) - lse[:, :, :, start:end])  # 0: masked
    dprobs = jnp.einsum("bkgsd,bktd->bkgst", gb, vb, preferred_element_type=jnp.float32)
    # Row sums of dprobs * probs, as the rows of dO . O (D wide instead of T); a product and a
    # sum, not a float32 matmul.
    g32, out32 = (jnp.squeeze(x, units).astype(jnp.float32) for x in (gb, outb))
    delta = jnp.sum(g32 * out32, axis=-1).reshape(*gb.shape[:-1], 1)
    dscores32 = probs * (dprobs - delta)
    dscores = dscores32.astype(q.dtype)
    dqs.append(_einsum("bkgst,bktd->bkgsd", dscores, kb) * scale)
    # The keys' gradients are summed over the blocks that see them, in float32, and rounded once.
    keys = [(0, 0)] * 2 + [(0, t - end), (0, 0)]
    dks.append(jnp.pad(jnp.einsum("bkgst,bkgsd->bktd", dscores, qb * scale,
                                  preferred_element_type=jnp.float32), keys))
    dvs.append(jnp.pad(jnp.einsum("bkgst,bkgsd->bktd", probs.astype(v.dtype), gb,
                                  preferred_element_type=jnp.float32), keys))
    if bias is not None:
      s = bias.shape[-1]
      dbiases.append(jnp.pad(jnp.sum(dscores32, axis=0),
                             [(0, 0)] * 2 + [(start, s - end), (0, s - end)]))
  dq, dk, dv = _joined(dqs, 3), sum(dks[1:], dks[0]), sum(dvs[1:], dvs[0])
  dbias = None if bias is None else sum(dbiases[1:], dbiases[0]).reshape(bias.shape)
  return (jnp.transpose(dq, (0, 3, 1, 2, 4)), jnp.transpose(dk.astype(k.dtype), (0, 2, 1, 3)),
          jnp.transpose(dv.astype(v.dtype), (0, 2, 1, 3)),
          None if dbias is None else dbias.astype(bias.dtype))


causal_attention.defvjp(_causal_attention_fwd, _causal_attention_bwd)


# --- the MLP's activations (docs/kernels.md, "gelu and swiglu", "activated_matmul") -------------

def _normal_cdf(x32):
  return 0.5 * (1.0 + jax.lax.erf(x32 * (1.0 / math.sqrt(2.0))))


@jax.custom_vjp
def gelu(x):
  """Exact GELU, x * Phi(x) with Phi from erf as PyTorch's nn.GELU computes it, in float32; its
  backward keeps only x and forms the derivative from it (autodiff keeps four hidden-size tensors
  per layer)."""
  x32 = x.astype(jnp.float32)
  return (x32 * _normal_cdf(x32)).astype(x.dtype)


def _gelu_fwd(x):
  return gelu(x), x


def _gelu_bwd(x, g):
  x32 = x.astype(jnp.float32)
  cdf = _normal_cdf(x32)
  pdf = jnp.exp(-0.5 * jnp.square(x32)) * (1.0 / math.sqrt(2.0 * math.pi))
  return ((g.astype(jnp.float32) * (cdf + x32 * pdf)).astype(x.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


@jax.custom_vjp
def swiglu(gate, up):
  """silu(gate) * up; its backward keeps only gate and up (autodiff keeps six hidden-size tensors
  per layer) and forms the derivatives from them in float32."""
  return jax.nn.silu(gate) * up


def _swiglu_fwd(gate, up):
  return swiglu(gate, up), (gate, up)


def _swiglu_bwd(residuals, g):
  gate, up = residuals
  gate32, g32 = gate.astype(jnp.float32), g.astype(jnp.float32)
  sig = jax.nn.sigmoid(gate32)
  dup = g32 * gate32 * sig
  dgate = g32 * up.astype(jnp.float32) * sig * (1.0 + gate32 * (1.0 - sig))
  return dgate.astype(gate.dtype), dup.astype(up.dtype)


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


ACTIVATIONS = {"gelu": gelu, "swiglu": swiglu}


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def activated_matmul(activation: str, hs, kernel):
  """ACTIVATIONS[activation](*hs) @ kernel, for pre-activations hs [T, F] and kernel [F, D]
  (float32, cast to hs's dtype). Its backward recomputes the activation from hs instead of
  keeping it: one [T, F] tensor less per layer."""
  return _activated_matmul_fwd(activation, hs, kernel)[0]


def _activated_matmul_fwd(activation, hs, kernel):
  # Not activated_matmul(...), as in _matmul_fwd.
  a = ACTIVATIONS[activation](*hs)
  # The kernel in float32, as it came.
  return _einsum("tf,fd->td", a, kernel.astype(a.dtype)), (tuple(map(_kept, hs)), kernel)


def _activated_matmul_bwd(activation, residuals, g):
  hs, kernel = residuals
  hs = tuple(map(_restored, hs))
  # As in the attention's backward: without the barrier XLA merges this recomputation with the
  # forward's activation when layers are unrolled, and keeps every layer's.
  hs = jax.lax.optimization_barrier(hs)
  a, activation_vjp = jax.vjp(ACTIVATIONS[activation], *hs)
  (k,) = _recast((kernel,), a.dtype)
  dkernel = _weight_grad(a, g, 1).astype(kernel.dtype)
  da = _einsum("td,fd->tf", g, k)
  return activation_vjp(da), dkernel


activated_matmul.defvjp(_activated_matmul_fwd, _activated_matmul_bwd)


# --- norms (docs/kernels.md, "normalize", "normalized_matmuls") ---------------------------------

@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def normalize(x, scale, bias, epsilon: float, rms: bool, dtype):
  """LayerNorm (rms=False) or RMSNorm of x over its last axis, computed in float32 as flax's
  LayerNorm / RMSNorm compute it (fast variance: E[x^2] - E[x]^2), returned in `dtype`. Its
  backward keeps only x and the float32 mean and 1/std per position, as PyTorch's layer norm
  does; autodiff keeps three float32 copies of the normalized tensor."""
  return _normalize_fwd(x, scale, bias, epsilon, rms, dtype)[0]


def norm_stats(x32, epsilon: float, rms: bool):
  """(mean, 1/std) over x32's last axis, float32, as flax computes them (mean 0 for RMSNorm)."""
  mean_sq = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
  if rms:
    mean = jnp.zeros_like(mean_sq)
    var = mean_sq
  else:
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.maximum(0.0, mean_sq - jnp.square(mean))
  return mean, jax.lax.rsqrt(var + epsilon)


def normalized(x, mean, rstd, scale, bias, dtype):
  """(x - mean) * rstd * scale (+ bias), in float32, returned in `dtype`."""
  y = (x.astype(jnp.float32) - mean) * (rstd * scale)
  return (y if bias is None else y + bias).astype(dtype)


def _normalize_fwd(x, scale, bias, epsilon, rms, dtype):
  mean, rstd = norm_stats(x.astype(jnp.float32), epsilon, rms)
  return normalized(x, mean, rstd, scale, bias, dtype), (_kept(x), mean, rstd, scale, bias)


def _normalize_bwd(epsilon, rms, dtype, residuals, g):
  x, mean, rstd, scale, bias = residuals
  x = _restored(x)
  xhat = (x.astype(jnp.float32) - mean) * rstd
  g32 = g.astype(jnp.float32)
  batch_axes = tuple(range(g.ndim - 1))
  dscale = jnp.sum(g32 * xhat, axis=batch_axes)
  dbias = None if bias is None else jnp.sum(g32, axis=batch_axes)
  gx = g32 * scale
  dxhat_term = xhat * jnp.mean(gx * xhat, axis=-1, keepdims=True)
  if rms:
    dx = rstd * (gx - dxhat_term)
  else:
    dx = rstd * (gx - jnp.mean(gx, axis=-1, keepdims=True) - dxhat_term)
  return dx.astype(x.dtype), dscale, dbias


normalize.defvjp(_normalize_fwd, _normalize_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def normalized_matmuls(x, scale, bias, kernels, epsilon: float, rms: bool, dtype):
  """normalize(x, scale, bias, ...) contracted with each of `kernels` ([d, *out], float32, cast to
  `dtype`) over its last axis: a pre-norm block's norm and the matmuls it feeds (q/k/v; the MLP's
  up and gate). Its backward recomputes the normalized tensor from what normalize keeps anyway
  instead of keeping it for the kernels' gradients: one [tokens, d] tensor less per norm."""
  return _normalized_matmuls_fwd(x, scale, bias, kernels, epsilon, rms, dtype)[0]


def _normalized_matmuls_fwd(x, scale, bias, kernels, epsilon, rms, dtype):
  y, residuals = _normalize_fwd(x, scale, bias, epsilon, rms, dtype)
  outs = tuple(_dot_general(y, k.astype(dtype), (((y.ndim - 1,), (0,)), ((), ())))
               for k in kernels)
  return outs, (residuals, kernels)


def _normalized_matmuls_bwd(epsilon, rms, dtype, residuals, gs):
  (x, mean, rstd, scale, bias), kernels = residuals
  x = _restored(x)
  # As in activated_matmul: with unrolled layers XLA would otherwise merge the recomputation with
  # the forward's normalized tensor and keep every layer's.
  x, mean, rstd = jax.lax.optimization_barrier((x, mean, rstd))
  y = normalized(x, mean, rstd, scale, bias, dtype)
  dkernels = tuple(_weight_grad(y, g, x.ndim - 1).astype(k.dtype) for g, k in zip(gs, kernels))
  kernels = _recast(kernels, dtype)
  # Each matmul's input gradient in the compute dtype, summed in it, as autodiff forms them.
  dy = sum(_dot_general(g, k, ((tuple(range(x.ndim - 1, g.ndim)), tuple(range(1, k.ndim))),
                                ((), ())))
           for g, k in zip(gs, kernels))
  dx, dscale, dbias = _normalize_bwd(epsilon, rms, dtype, (x, mean, rstd, scale, bias), dy)
  return dx, dscale, dbias, dkernels


normalized_matmuls.defvjp(_normalized_matmuls_fwd, _normalized_matmuls_bwd)


# --- the reference: the same functions in plain jnp, differentiated by autodiff ------------------

def reference_matmul(spec: str, x, weight, keep_bits: bool = False):
  """matmul's function, jnp.einsum(spec, x, weight.astype(x.dtype)), with autodiff's backward
  (`keep_bits` has no meaning here)."""
  del keep_bits
  return jnp.einsum(spec, x, weight.astype(x.dtype))


def reference_attention(q, k, v, bias, rows: int):
  """causal_attention's function, by the same query blocks (`rows`; a block of seq_len rows is
  the plain [S, S] attention), with jax.nn.softmax and autodiff's backward."""
  q, k, v = _heads_major(q, k, v)
  outs = []
  for start, n in query_blocks(q.shape[3], rows):
    end = start + n
    scores = _attention_scores(q[:, :, :, start:end], k[:, :, :end], bias, start)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    outs.append(jnp.einsum("bkgst,bktd->bkgsd", probs, v[:, :, :end]))
  return jnp.transpose(_joined(outs, 3), (0, 3, 1, 2, 4))


REFERENCE_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x.astype(jnp.float32), approximate=False).astype(x.dtype),
    "swiglu": lambda gate, up: jax.nn.silu(gate) * up,
}


def reference_activated_matmul(activation: str, hs, kernel):
  """activated_matmul's function, the activation's output kept by autodiff for the backward."""
  a = REFERENCE_ACTIVATIONS[activation](*hs)
  return jnp.einsum("tf,fd->td", a, kernel.astype(a.dtype))


def reference_normalize(x, scale, bias, epsilon: float, rms: bool, dtype):
  """normalize's function, differentiated by autodiff."""
  return normalized(x, *norm_stats(x.astype(jnp.float32), epsilon, rms), scale, bias, dtype)


def reference_normalized_matmuls(x, scale, bias, kernels, epsilon: float, rms: bool, dtype):
  """normalized_matmuls' function: reference_normalize, then each matmul, by autodiff."""
  y = reference_normalize(x, scale, bias, epsilon, rms, dtype)
  return tuple(jax.lax.dot_general(y, k.astype(dtype), (((y.ndim - 1,), (0,)), ((), ())))
               for k in kernels)


class Ops(NamedTuple):
  """The ops model.py's layers call, one implementation of each."""
  matmul: Callable
  causal_attention: Callable
  activated_matmul: Callable
  normalize: Callable
  normalized_matmuls: Callable


# model.impl: `tuned`, the custom VJPs above; `reference`, plain jnp with autodiff.
IMPLEMENTATIONS = {
    "tuned": Ops(matmul, causal_attention, activated_matmul, normalize, normalized_matmuls),
    "reference": Ops(reference_matmul, reference_attention, reference_activated_matmul,
                     reference_normalize, reference_normalized_matmuls),
}
