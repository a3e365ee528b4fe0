"""The decoder-only transformer (Flax linen), both families from one set of modules.

Data flows top to bottom: ModelConfig, attention kernels, Attention, Mlp, Block, Transformer.
MPT: LayerNorm, learned positions or ALiBi, GELU MLP, tied embeddings.
Llama: RMSNorm, rotary embeddings (Hugging Face half-split), SwiGLU, grouped-query attention.

Parameters are float32 and carry logical axis names (sharding.py maps them to the mesh); compute
runs in `dtype`, every matmul accumulating in float32 (matmul); layer norms, softmax and the loss
run in float32. The model knows nothing of meshes: it only names axes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from jaxbench import sharding

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _saving_rounded_matmuls(dots_policy, *names):
  """A remat policy that saves what jax's `dots_policy` saves, except the results of matmuls that
  widen their operands' dtype (this model's bf16 matmuls accumulate in float32: kept, their results
  would take twice the bytes), and saves instead those matmuls' rounded results, named `names`
  (_rounded)."""
  named = jax.checkpoint_policies.save_only_these_names(*names)

  def policy(prim, *avals, **params):
    if prim.name == "dot_general":
      widened = params.get("preferred_element_type")
      if widened is not None and any(a.dtype != widened for a in avals):
        return False
    return dots_policy(prim, *avals, **params) or named(prim, *avals, **params)
  return policy


REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole block in the backward pass
    "dots": _saving_rounded_matmuls(jax.checkpoint_policies.checkpoint_dots,
                                    "matmul", "batched_matmul"),
    "dots_no_batch": _saving_rounded_matmuls(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable, "matmul"),
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  n_kv_heads: int
  d_ff: int
  max_seq_len: int
  position: str  # learned | alibi | rope
  norm: str  # layernorm | rmsnorm
  mlp: str  # gelu | swiglu
  bias: bool
  tie_embeddings: bool
  norm_eps: float
  rope_theta: float
  init_std: float
  attention: str  # xla | jax | cudnn | pallas | pallas-interpret (auto is resolved before)
  remat: str
  scan_layers: bool
  dtype: Any = jnp.float32
  attention_block: int = 0  # query rows per block of the xla attention (0: query_block_rows's)

  @property
  def head_dim(self) -> int:
    return self.d_model // self.n_heads

  @classmethod
  def from_config(cls, c, attention: str) -> "ModelConfig":
    m = c.model
    return cls(vocab_size=m.vocab_size, d_model=m.d_model, n_layers=m.n_layers, n_heads=m.n_heads,
               n_kv_heads=m.n_kv_heads, d_ff=m.d_ff, max_seq_len=m.max_seq_len,
               position=m.position, norm=m.norm, mlp=m.mlp, bias=m.bias,
               tie_embeddings=m.tie_embeddings, norm_eps=m.norm_eps, rope_theta=m.rope_theta,
               init_std=m.init_std, attention=attention, remat=m.remat,
               scan_layers=m.scan_layers, dtype=DTYPES[c.dtype],
               attention_block=m.get("attention_block", 0))  # absent from older run.json


def _rounded(y, dtype, batched: bool):
  """A matmul's float32 result rounded to `dtype`, named for the remat policies that keep matmul
  results ("dots": both names; "dots_no_batch": "matmul" only). A bfloat16 result is named as its
  bits (_kept), so that a policy keeps the bits and a scan over layers stacks them in place: XLA's
  CPU backend rewrote a whole bf16 stack every layer (mpt:small bf16 with remat=dots, 24 layers:
  the scan's step took 1.38x the unrolled one's; benchmarks/RESULTS.md, goal 1). Only inside the
  model's custom VJPs: autodiff does not differentiate through the integer bits."""
  y = y.astype(dtype)
  return _restored(checkpoint_name(_kept(y), "batched_matmul" if batched else "matmul"))


def _einsum(spec: str, a, b):
  """jnp.einsum(spec, a, b) accumulated in float32 and rounded once to the operands' dtype, as a
  GPU's GEMM and PyTorch's bfloat16 matmul compute it. Asked for a bfloat16 result instead, XLA's
  CPU backend widens both operands to float32 and runs its float32 kernels: at half the rate of
  its bfloat16 ones on a CPU with AVX512-BF16 (benchmarks/RESULTS.md, goal 1)."""
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
  there. Keeping the forward's casts instead costs 2 bytes a parameter until the backward: a scan
  over layers stacks them, and under FSDP they are the gathered, whole weights. The barrier stops
  XLA from merging the cast with the forward's when layers are unrolled."""
  return tuple(w.astype(dtype) for w in jax.lax.optimization_barrier(tuple(weights)))


def _kept(x):
  """A residual kept for a backward pass, a bfloat16 one as its bits (uint16; free).

  A scan over layers stacks each layer's residuals with a dynamic-update-slice. XLA's CPU backend
  runs a bf16 dynamic-update-slice in float32: it widens the whole stack, updates one layer and
  rounds the whole stack back, every layer, so stacking costs grow with the square of the depth.
  On integers it updates the slice in place. (A [2048, 1536] residual in a scan of 48 layers
  cost 11.5 ms a layer in bf16, 3.9 as bits: benchmarks/RESULTS.md, goal 1.) For a GPU the
  bitcasts compile away: deviceless, the same temporaries and bytes."""
  return jax.lax.bitcast_convert_type(x, jnp.uint16) if x.dtype == jnp.bfloat16 else x


def _restored(x):
  """The residual _kept(x) kept, as x (unchanged if it was not bfloat16)."""
  return jax.lax.bitcast_convert_type(x, jnp.bfloat16) if x.dtype == jnp.uint16 else x


def _weight_grad(x, g, rows: int):
  """A kernel's gradient: x [*tokens, *m] and the output gradient g [*tokens, *n], contracted
  over their `rows` leading (token) dims -> [*m, *n], accumulated in float32 and rounded once
  (_dot_general). Written so that XLA's CPU backend runs it on its bfloat16 kernels:
  - A bf16 dot whose lhs contracts its single leading dim, XLA widens to float32 before it
    decides layouts. Given two contracted dims it instead copies the lhs transposed, in bf16. So
    one token dim is split in two (a bitcast: [T] -> [T / k, k], k its smallest factor: the
    major part keeps the batch sharding where each shard's token count is a multiple of k); a
    prime number of tokens is left as it is.
  - The lhs is the operand XLA copies, so it is the one with fewer features (for the MLP's
    [d_ff, d_model] kernel the output gradient, with the result transposed back).
  For the MLP of configs/mpt.py:small in bf16 on an AVX512-BF16 CPU, each of these matmuls took
  8.6 ms contracting one token dim and 3.4 ms so (benchmarks/RESULTS.md, goal 1). For a GPU XLA
  compiles the same GEMMs (the swapped one writes its result transposed, a bitcast): deviceless
  for the H200, the step's bytes accessed and temporaries are unchanged."""
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
  within an operand), each of its three matmuls (forward, and the backward's two) accumulated in
  float32 and rounded once to x's dtype (_einsum). Autodiff's backward matmuls would ask XLA for
  bfloat16 results. The weight may come in its float32 storage dtype: the backward casts it again
  (_recast) and returns its gradient in that dtype.

  keep_bits: x is kept for the backward as _kept keeps residuals. Not when another op keeps the
  same x as it is: under cuDNN attention the output projection's x is the attention's output,
  which the attention keeps too, and a scan stacks the two once only while they are one array
  (deviceless for the H200, mpt-125m batch 32: 1.2 GB more temporaries with keep_bits)."""
  return _matmul_fwd(spec, x, weight, keep_bits)[0]


def _matmul_fwd(spec, x, weight, keep_bits):
  # Computed here, not by calling matmul: a custom VJP nested in its own forward hides the named
  # result from the remat policies (REMAT_POLICIES).
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


def param_count(cfg: ModelConfig) -> dict[str, int]:
  """Analytic parameter counts, checked against the real tree by the tests and at start-up."""
  d, h, k, hd, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff
  attention = d * h * hd + 2 * d * k * hd + h * hd * d
  mlp = (3 if cfg.mlp == "swiglu" else 2) * d * f
  norm = d * (2 if cfg.norm == "layernorm" and cfg.bias else 1)
  if cfg.bias:
    attention += h * hd + 2 * k * hd + d
    mlp += (2 * f if cfg.mlp == "swiglu" else f) + d
  per_layer = attention + mlp + 2 * norm
  embedding = cfg.vocab_size * d
  lm_head = 0 if cfg.tie_embeddings else cfg.vocab_size * d
  position = cfg.max_seq_len * d if cfg.position == "learned" else 0
  total = cfg.n_layers * per_layer + norm + embedding + lm_head + position
  return {"total": total, "per_layer": per_layer, "embedding": embedding, "lm_head": lm_head,
          "position": position}


def _init(std: float, axes):
  return nn.with_logical_partitioning(nn.initializers.normal(std), axes)


def _zeros(axes):
  return nn.with_logical_partitioning(nn.initializers.zeros, axes)


# --- attention kernels: q [B, S, H, D], k/v [B, S, K, D] -> [B, S, H, D] (causal) -------------

def alibi_bias(n_heads: int, seq_len: int) -> jax.Array:
  """ALiBi biases [H, S, S] in float32: -slope_h * (i - j) (Press et al. 2022; MPT's slopes,
  alibi_bias_max 8, including its interleaving when n_heads is not a power of two)."""
  padded = 2 ** math.ceil(math.log2(n_heads))
  m = jnp.arange(1, padded + 1, dtype=jnp.float32) * (8.0 / padded)
  slopes = 1.0 / jnp.power(2.0, m)
  if padded != n_heads:
    slopes = jnp.concatenate([slopes[1::2], slopes[::2]])[:n_heads]
  pos = jnp.arange(seq_len, dtype=jnp.float32)
  distance = pos[:, None] - pos[None, :]
  return -slopes[:, None, None] * distance[None]


def xla_attention(q, k, v, bias=None, block: int = 0):
  """Causal attention in einsums, grouped-query heads without copies; scores and softmax in
  float32, by blocks of `block` query rows (0: query_block_rows's choice). Its backward
  (causal_attention) keeps the softmax's log-normalizer, not the [S, S] probabilities."""
  b, s, h, d = q.shape
  kv = k.shape[2]
  out = causal_attention(q.reshape(b, s, kv, h // kv, d), k, v, bias, query_block_rows(s, block))
  return out.reshape(b, s, h, d)


def query_block_rows(seq_len: int, block: int = 0) -> int:
  """Rows per query block of the causal attention: `block` if given (>= seq_len: one block),
  else a block of 64 rows, or an eighth of the sequence where that is more (at most 8 blocks).
  On a 2-core CPU, mpt small (seq 256, 6 heads of 64) ran its attention 1.8x as fast in blocks of
  64 rows as unblocked, and 1.9x in blocks of 128 at seq 1024; blocks of 32 were slower again
  (benchmarks/RESULTS.md, goal 1)."""
  return min(seq_len, block if block > 0 else max(64, -(-seq_len // 8)))


def query_blocks(seq_len: int, rows: int) -> list[tuple[int, int]]:
  """(first row, rows) of each query block; a block's rows see the keys [0, first row + rows)."""
  return [(start, min(rows, seq_len - start)) for start in range(0, seq_len, rows)]


def scores_fraction(seq_len: int, rows: int) -> float:
  """The share of the full [S, S] scores the blocks compute (1 for one block)."""
  return sum(n * (start + n) for start, n in query_blocks(seq_len, rows)) / seq_len ** 2


def attention_blocks(seq_len: int, block: int = 0) -> dict:
  """What the xla attention computes at this length (run.json's `attention`): its query blocks'
  rows, how many, and the share of the [S, S] scores they compute."""
  rows = query_block_rows(seq_len, block)
  return {"query_block_rows": rows, "query_blocks": len(query_blocks(seq_len, rows)),
          "scores_computed": round(scores_fraction(seq_len, rows), 4)}


def attention_blocks_text(info: dict) -> str | None:
  """attention_blocks' figures, as run.json's `attention` holds them, in words ("4 blocks of 64
  query rows, 62.5% of the scores"); None for one block or another attention."""
  if info.get("query_blocks", 1) == 1:
    return None
  return (f"{info['query_blocks']} blocks of {info['query_block_rows']} query rows, "
          f"{info['scores_computed']:.1%} of the scores")


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

  By blocks of `rows` query rows (query_blocks), each against the keys it can see: the blocks
  skip the scores above the diagonal that the mask would drop, as flash attention and PyTorch's
  CPU attention do (62.5% of the scores' work at seq 256 in blocks of 64). XLA's CPU backend runs
  a batch of small matmuls on one thread; the blocks' smaller ones ran faster there than their
  share of the work (1.9x on one core, where the work alone gives 1.6x).

  Its backward recomputes the scores from q and k and forms the probabilities from the saved
  log-normalizer (flash attention's backward): autodiff kept the [B, H, S, S] float32
  probabilities of every layer for the backward pass and reduced over their rows again there; this
  keeps [B, H, S] and reduces dO * O over D instead. Deviceless for an H100 with this attention,
  mpt-125m at batch 8 needs 10.2 GiB of temporaries instead of 50.2; on a CPU, 21% less and 6%
  less op time (benchmarks/RESULTS.md).

  The matmuls run on head-major copies ([B, heads, S, D], each transposed once): batched over
  the leading dims and written contiguously, XLA's CPU backend ran them up to 2x faster than on
  the projections' [B, S, heads, D] layout, whose strided output it wrote through a transpose."""
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
  # The barrier keeps XLA from merging this recomputation with the forward's scores (CSE, as it
  # did with unrolled layers): the merged step kept every layer's [B, H, S, S] float32 scores
  # until the backward pass (deviceless for an H100, mpt-125m batch 8 with scan_layers=False:
  # 27.7 GB of temporaries against 9.8 with scan). XLA's CPU backend expands barriers before its
  # last CSE: with unrolled layers it still merges the blocks that take a slice of the keys.
  q, k = jax.lax.optimization_barrier((q, k))
  scale = jnp.asarray(1.0 / math.sqrt(d), q.dtype)
  # Without unit dims in the row sums below: with one among its operands' dims (G = 1 without
  # grouped-query heads, or a batch of 1) XLA's CPU backend (YNNPACK) ran that product-and-sum
  # 6-40x slower. Only unit dims go: merging sharded dims would cost all-gathers under a mesh.
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


def dot_product_attention(q, k, v, bias=None, implementation="xla"):
  """jax.nn.dot_product_attention: `xla` (its reference path) or `cudnn` (fused, CUDA)."""
  if bias is not None:
    bias = bias[None].astype(q.dtype)
  return jax.nn.dot_product_attention(q, k, v, bias=bias, is_causal=True,
                                      implementation=implementation)


def pallas_attention(q, k, v, bias=None, interpret: bool = False):
  """Pallas's Triton flash attention (jax.experimental.pallas.ops.gpu.attention.mha) with its own
  backward kernels: one fused kernel that Triton compiles for NVIDIA and AMD GPUs alike, as the
  Triton FlashAttention of MosaicML's MI250-against-A100 study ran on both. The scores stay in the
  kernel's blocks; the backward keeps the log-normalizer. Grouped-query heads are repeated to the
  query heads (the kernel takes one head count). `interpret`: Pallas's interpreter (the CPU)."""
  from jax.experimental.pallas.ops.gpu import attention as pallas_gpu
  if bias is not None:
    raise ValueError("the Pallas attention takes no bias (ALiBi)")
  groups = q.shape[2] // k.shape[2]
  if groups > 1:
    k, v = jnp.repeat(k, groups, axis=2), jnp.repeat(v, groups, axis=2)
  blocks = pallas_gpu.BlockSizes(block_q=PALLAS_BLOCK, block_k=PALLAS_BLOCK, block_q_dkv=32,
                                 block_kv_dkv=32, block_q_dq=32, block_kv_dq=32)
  return pallas_gpu.mha(q, k, v, None, sm_scale=q.shape[-1] ** -0.5, causal=True,
                        block_sizes=blocks, interpret=interpret)


# Rows per block of the Pallas attention's forward kernel (its backward: 32). Pallas's default, 128,
# does not fit an AMD workgroup's 64 KiB of LDS at head_dim 128 (the ROCm compiler, gfx90a and
# gfx942: "Shared memory size limit exceeded: requested 98304, available: 65536"); 64 fits, and
# NVIDIA runs the same blocks, so both vendors run the same kernel.
PALLAS_BLOCK = 64


def pallas_problem(seq_len: int, position: str) -> str | None:
  """Why the Pallas attention cannot take this config (its blocks), or None."""
  if position == "alibi":
    return "ALiBi's bias is not taken by the Pallas kernel"
  if seq_len % 32 or (seq_len > PALLAS_BLOCK and seq_len % PALLAS_BLOCK):
    return (f"seq_len {seq_len} must be a multiple of 32, and of {PALLAS_BLOCK} above "
            f"{PALLAS_BLOCK} (its blocks)")
  return None


ATTENTION_KERNELS = {
    "xla": xla_attention,
    "jax": functools.partial(dot_product_attention, implementation="xla"),
    "cudnn": functools.partial(dot_product_attention, implementation="cudnn"),
    "pallas": pallas_attention,
    # The same kernel run by Pallas's interpreter: what `pallas` runs on a CPU.
    "pallas-interpret": functools.partial(pallas_attention, interpret=True),
}


def rotary(x, positions, theta: float):
  """Rotary embedding, Hugging Face convention: the head dim split in halves, not interleaved."""
  d = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
  angles = positions[:, :, None].astype(jnp.float32) * inv_freq  # [B, S, D/2]
  cos = jnp.concatenate([jnp.cos(angles)] * 2, axis=-1)[:, :, None, :]
  sin = jnp.concatenate([jnp.sin(angles)] * 2, axis=-1)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x.astype(jnp.float32) * cos + rotated * sin).astype(x.dtype)


def over_tokens(layer, *xs):
  """layer(*xs) with the inputs' leading [batch, length] dims read as one token dim: one matmul
  over B*S rows. Left as [B, S, d], autodiff's weight gradients contracted [B, S] with the MLP's
  hidden gradient as the lhs, and XLA's CPU backend wrote that gradient transposed first
  ([d_ff, B*S] per layer, with the GELU's derivative fused in: 13% of a CPU step of
  configs/mpt.py:small). The kernels' gradients (_weight_grad) now split the token dim again,
  with the smaller operand as the lhs. The reshapes are bitcasts; for an H100 the compiled step
  is unchanged (deviceless: same temporaries). The attention projections gained nothing from it
  on the CPU and cost 5% more temporaries on an H100, so they are left as they are."""
  b, s = xs[0].shape[:2]
  ys = layer(*(x.reshape(b * s, *x.shape[2:]) for x in xs))
  return jax.tree.map(lambda y: y.reshape(b, s, *y.shape[1:]), ys)


class Projection(nn.Module):
  """The kernel and bias of nn.DenseGeneral(features) over an input's trailing `in_features`
  axes: the same names, shapes, initial values and logical axes, for an op that applies them itself
  (normalized_matmuls, matmul): the kernel in float32, which that op casts to the compute dtype
  itself, the bias in the compute dtype."""
  in_features: int | tuple[int, ...]
  features: tuple[int, ...]
  use_bias: bool
  dtype: Any
  kernel_init: Any
  bias_init: Any

  @nn.compact
  def __call__(self):
    def flat_init(init, flat_shape):
      # DenseGeneral draws a [prod(in), prod(features)] matrix and reshapes it: the same values.
      def draw(rng, shape, dtype):
        value = init(rng, flat_shape, dtype)
        if isinstance(value, nn.meta.AxisMetadata):
          return nn.meta.replace_boxed(value, jnp.reshape(value.unbox(), shape))
        return jnp.reshape(value, shape)
      return draw

    in_shape = ((self.in_features,) if isinstance(self.in_features, int)
                else tuple(self.in_features))
    width = math.prod(self.features)
    kernel = self.param("kernel", flat_init(self.kernel_init, (math.prod(in_shape), width)),
                        (*in_shape, *self.features), jnp.float32)
    bias = None
    if self.use_bias:
      bias = self.param("bias", flat_init(self.bias_init, (width,)), self.features,
                        jnp.float32).astype(self.dtype)
    return kernel, bias


def _project(norm, x, weights):
  """norm(x) times each of `weights` ((kernel, bias) pairs from Projection), by the norm's fused
  normalized_matmuls, biases added."""
  kernels, biases = zip(*weights)
  return tuple(y if bias is None else y + bias for y, bias in zip(norm(x, kernels), biases))


class Attention(nn.Module):
  """Self-attention on norm(x): the block's Norm is applied here, fused with the q/k/v matmuls
  (normalized_matmuls), so the backward pass recomputes the normalized input."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, positions, norm: Norm):
    c = self.cfg
    projection = functools.partial(Projection, c.d_model, use_bias=c.bias, dtype=c.dtype)
    weights = [
        projection((c.n_heads, c.head_dim),
                   kernel_init=_init(c.init_std, ("embed", "heads", "head_dim")),
                   bias_init=_zeros(("heads", "head_dim")), name="query")(),
        *(projection((c.n_kv_heads, c.head_dim),
                     kernel_init=_init(c.init_std, ("embed", "kv_heads", "head_dim")),
                     bias_init=_zeros(("kv_heads", "head_dim")), name=name)()
          for name in ("key", "value"))]
    q, k, v = _project(norm, x, weights)
    q = sharding.constrain(q, ("activation_batch", "activation_length", "activation_heads", None))
    k = sharding.constrain(k, ("activation_batch", "activation_length", "activation_kv_heads", None))
    v = sharding.constrain(v, ("activation_batch", "activation_length", "activation_kv_heads", None))
    if c.position == "rope":
      q = rotary(q, positions, c.rope_theta)
      k = rotary(k, positions, c.rope_theta)
    bias = alibi_bias(c.n_heads, q.shape[1]) if c.position == "alibi" else None
    attend = ATTENTION_KERNELS[c.attention]
    if c.attention == "xla":
      attend = functools.partial(attend, block=c.attention_block)
    if c.attention.startswith("pallas"):
      # One opaque kernel that XLA's partitioner cannot split: each device runs it on its shard.
      attend = sharding.per_shard(
          lambda q, k, v: ATTENTION_KERNELS[c.attention](q, k, v),
          [("activation_batch", "activation_length", heads, None)
           for heads in ("activation_heads", "activation_kv_heads", "activation_kv_heads")],
          ("activation_batch", "activation_length", "activation_heads", None))
      out = attend(q, k, v)
    else:
      out = attend(q, k, v, bias)
    out = sharding.constrain(out, ("activation_batch", "activation_length", "activation_heads", None))
    kernel, out_bias = Projection((c.n_heads, c.head_dim), (c.d_model,), c.bias, c.dtype,
                                  _init(c.init_std / math.sqrt(2 * c.n_layers),
                                        ("heads", "head_dim", "embed")),
                                  _zeros(("embed",)), name="out")()
    # The "xla" attention keeps its output head-major, another array (causal_attention).
    out = matmul("bshd,hde->bse", out, kernel, c.attention == "xla")
    return out if out_bias is None else out + out_bias


def _normal_cdf(x32):
  return 0.5 * (1.0 + jax.lax.erf(x32 * (1.0 / math.sqrt(2.0))))


@jax.custom_vjp
def gelu(x):
  """Exact GELU, x * Phi(x) with Phi from erf as PyTorch's nn.GELU computes it; its backward keeps
  only x and computes the derivative from it in float32 (autodiff keeps four hidden-size tensors
  per layer, this one). jax.nn.gelu(approximate=False) spells Phi with erfc, which XLA's CPU
  backend expands into a branchy polynomial it split over three loops inside the layer scan."""
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
  return nn.silu(gate) * up


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
  """ACTIVATIONS[activation](*hs) @ kernel, for pre-activations hs [T, F] and kernel [F, D].

  Its backward recomputes the activation from hs instead of keeping it: autodiff kept the
  activation's output for the kernel's gradient, one more [T, F] tensor per layer beside hs,
  which a scan over layers also stacks and reads back."""
  return _activated_matmul_fwd(activation, hs, kernel)[0]


def _activated_matmul_fwd(activation, hs, kernel):
  # Not activated_matmul(...), as in _matmul_fwd.
  a = ACTIVATIONS[activation](*hs)
  # The kernel in float32, as it came.
  return _einsum("tf,fd->td", a, kernel.astype(a.dtype)), (tuple(map(_kept, hs)), kernel)


def _activated_matmul_bwd(activation, residuals, g):
  hs, kernel = residuals
  hs = tuple(map(_restored, hs))
  # As in the attention backward: without the barrier XLA merges this recomputation with the
  # forward's activation when layers are unrolled, and keeps every layer's (deviceless for the
  # H200, mpt-350m batch 32 with scan_layers=False needed 10.4 GiB more than scanned).
  hs = jax.lax.optimization_barrier(hs)
  a, activation_vjp = jax.vjp(ACTIVATIONS[activation], *hs)
  (k,) = _recast((kernel,), a.dtype)
  dkernel = _weight_grad(a, g, 1).astype(kernel.dtype)
  da = _einsum("td,fd->tf", g, k)
  return activation_vjp(da), dkernel


activated_matmul.defvjp(_activated_matmul_fwd, _activated_matmul_bwd)


class ActivatedDense(nn.Module):
  """nn.Dense (same parameters, dtypes and result) applied to activation(*hs): activated_matmul."""
  features: int
  activation: str
  use_bias: bool
  dtype: Any
  kernel_init: Any
  bias_init: Any

  @nn.compact
  def __call__(self, *hs):
    kernel = self.param("kernel", self.kernel_init, (hs[0].shape[-1], self.features), jnp.float32)
    hs = tuple(h.astype(self.dtype) for h in hs)
    y = activated_matmul(self.activation, hs, kernel)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,), jnp.float32).astype(self.dtype)
    return y


class Mlp(nn.Module):
  """The MLP on norm(x), its first matmuls fused with the norm as Attention's are."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, norm: Norm):
    c = self.cfg
    names = ("gate", "up") if c.mlp == "swiglu" else ("up",)
    weights = [Projection(c.d_model, (c.d_ff,), c.bias, c.dtype,
                          _init(c.init_std, ("embed", "mlp")), _zeros(("mlp",)), name=name)()
               for name in names]
    hs = [sharding.constrain(h, ("activation_batch", "activation_length", "activation_mlp"))
          for h in over_tokens(lambda rows: _project(norm, rows, weights), x)]
    down = ActivatedDense(c.d_model, c.mlp, c.bias, c.dtype,
                          _init(c.init_std / math.sqrt(2 * c.n_layers), ("mlp", "embed")),
                          _zeros(("embed",)), name="down")
    return over_tokens(down, *hs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def normalize(x, scale, bias, epsilon: float, rms: bool, dtype):
  """LayerNorm (rms=False) or RMSNorm of x over its last axis, computed in float32 as flax's
  LayerNorm / RMSNorm compute it (fast variance: E[x^2] - E[x]^2), returned in `dtype`.

  The backward pass keeps only x (in its own dtype) and the float32 mean and 1/std per position,
  and recomputes the normalized values from them, as PyTorch's layer norm does. Left to autodiff,
  XLA keeps three float32 copies of every normalized tensor for the backward pass: 24 bytes per
  model dimension per token per layer, a third of what a bf16 block keeps (benchmarks/RESULTS.md,
  goal 4)."""
  return _normalize_fwd(x, scale, bias, epsilon, rms, dtype)[0]


def _norm_stats(x32, epsilon: float, rms: bool):
  mean_sq = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
  if rms:
    mean = jnp.zeros_like(mean_sq)
    var = mean_sq
  else:
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.maximum(0.0, mean_sq - jnp.square(mean))
  return mean, jax.lax.rsqrt(var + epsilon)


def _normalized(x, mean, rstd, scale, bias, dtype):
  y = (x.astype(jnp.float32) - mean) * (rstd * scale)
  return (y if bias is None else y + bias).astype(dtype)


def _normalize_fwd(x, scale, bias, epsilon, rms, dtype):
  mean, rstd = _norm_stats(x.astype(jnp.float32), epsilon, rms)
  return _normalized(x, mean, rstd, scale, bias, dtype), (_kept(x), mean, rstd, scale, bias)


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
  `dtype` inside and again in the backward: _recast) over its last axis: a pre-norm block's norm
  and the matmuls it feeds (q/k/v; the MLP's up and gate), with autodiff's values and gradients.

  The backward pass recomputes the normalized tensor from what normalize keeps anyway (x and two
  float32 statistics per position) instead of keeping it for the kernels' gradients: one
  [tokens, d] tensor less per norm per layer, which a scan over layers also stacks and reads back
  (benchmarks/RESULTS.md)."""
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
  y = _normalized(x, mean, rstd, scale, bias, dtype)
  dkernels = tuple(_weight_grad(y, g, x.ndim - 1).astype(k.dtype) for g, k in zip(gs, kernels))
  kernels = _recast(kernels, dtype)
  # Each matmul's input gradient in the compute dtype, summed in it, as autodiff forms them.
  dy = sum(_dot_general(g, k, ((tuple(range(x.ndim - 1, g.ndim)), tuple(range(1, k.ndim))),
                                ((), ())))
           for g, k in zip(gs, kernels))
  dx, dscale, dbias = _normalize_bwd(epsilon, rms, dtype, (x, mean, rstd, scale, bias), dy)
  return dx, dscale, dbias, dkernels


normalized_matmuls.defvjp(_normalized_matmuls_fwd, _normalized_matmuls_bwd)


class Norm(nn.Module):
  """LayerNorm or RMSNorm with flax's parameter names (scale, bias) and math (see normalize)."""
  rms: bool
  epsilon: float
  use_bias: bool
  dtype: Any

  @nn.compact
  def __call__(self, x, kernels: tuple | None = None):
    """norm(x); with kernels ([d, ...] each, float32), the tuple of norm(x) contracted with each,
    by normalized_matmuls."""
    d = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                       (d,), jnp.float32)
    bias = None
    if not self.rms and self.use_bias:
      bias = self.param("bias", _zeros(("norm",)), (d,), jnp.float32)
    if kernels is None:
      return normalize(x, scale, bias, self.epsilon, self.rms, self.dtype)
    return normalized_matmuls(x, scale, bias, kernels, self.epsilon, self.rms, self.dtype)


def norm(c: ModelConfig, name: str) -> nn.Module:
  return Norm(rms=c.norm == "rmsnorm", epsilon=c.norm_eps, use_bias=c.bias, dtype=c.dtype,
              name=name)


class Block(nn.Module):
  """Pre-norm residual block. Returns (x, None) so nn.scan can carry x across layers."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, x, positions):
    x = sharding.constrain(x, ("activation_batch", "activation_length", "activation_embed"))
    x = x + Attention(self.cfg, name="attention")(x, positions, norm(self.cfg, "attention_norm"))
    x = x + Mlp(self.cfg, name="mlp")(x, norm(self.cfg, "mlp_norm"))
    return x, None


def block_class(c: ModelConfig):
  if c.remat == "none":
    return Block
  # Under scan, prevent_cse=False is safe and lets XLA optimize across the loop (Flax docs).
  return nn.remat(Block, policy=REMAT_POLICIES[c.remat], prevent_cse=not c.scan_layers)


def logits(x, head):
  """Final hidden states [B, S, d] x output matrix [d, vocab] -> float32 logits [B, S, vocab].
  The matmul writes them in the compute dtype, as PyTorch's autocast does (the twin's
  `F.linear(x, head).float()`): in bfloat16 the output layer's matmul writes half the bytes, and
  each pass of the loss over them reads half, while the loss still computes in float32 (XLA fuses
  the widening into its reductions). The backward rounds the float32 gradient to the compute dtype
  before both of the layer's matmuls, as every other layer's does."""
  out = matmul("bsd,dv->bsv", x, head, False).astype(jnp.float32)
  return sharding.constrain(out, ("activation_batch", "activation_length", "activation_vocab"))


def head_matmul_grads(x, head, dlogits):
  """(dx, dhead) of logits(x, head) for the logits' gradient `dlogits`, as its backward computes
  them but accumulated in float32 (the chunked loss sums dhead over chunks)."""
  g = dlogits.astype(jnp.result_type(x, head))
  dx = jnp.einsum("bsv,dv->bsd", g, head, preferred_element_type=jnp.float32)
  dhead = jnp.einsum("bsd,bsv->dv", x, g, preferred_element_type=jnp.float32)
  return dx, dhead


class Transformer(nn.Module):
  """tokens [B, S] int32 -> logits [B, S, vocab] float32; with return_hidden=True, the final
  hidden states and the output matrix instead, for a loss that forms the logits piece by piece."""
  cfg: ModelConfig

  @nn.compact
  def __call__(self, tokens, return_hidden: bool = False):
    c = self.cfg
    embedding = self.param("embedding", _init(c.init_std, ("vocab", "embed")),
                           (c.vocab_size, c.d_model), jnp.float32)
    # The lookup reads a table gathered over `embed` (FSDP shards it), still split by vocab:
    # from the stored (vocab, embed) sharding GSPMD cannot reach the batch-sharded activations
    # and replicates the whole gather instead ("involuntary full rematerialization").
    lookup_table = sharding.constrain(embedding, ("vocab", None))
    x = jnp.take(lookup_table, tokens, axis=0).astype(c.dtype)
    x = sharding.constrain(x, ("activation_batch", "activation_length", "activation_embed"))
    positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    if c.position == "learned":
      table = self.param("position_embedding", _init(c.init_std, ("position", "embed")),
                         (c.max_seq_len, c.d_model), jnp.float32)
      # Looked up by position, as the tokens are, so its gradient is a scatter-add. The broadcast
      # add's gradient, a reduction over the batch, made XLA's GPU layout assignment put the
      # batch minor in the whole residual stream of unrolled layers at large batches ([S, d, B]:
      # every residual add and norm a transpose; mpt-125m at batch 32, deviceless for an H200:
      # 182 GB of memory traffic a step instead of 148; benchmarks/RESULTS.md).
      position_table = sharding.constrain(table, ("position", None))
      x = x + jnp.take(position_table, positions, axis=0, mode="clip").astype(c.dtype)
    block = block_class(c)
    if c.scan_layers:
      layers = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                       in_axes=nn.broadcast, length=c.n_layers,
                       metadata_params={nn.PARTITION_NAME: "layers"})
      x, _ = layers(c, name="layers")(x, positions)
    else:
      for i in range(c.n_layers):
        x, _ = block(c, name=f"layers_{i}")(x, positions)
    x = norm(c, "final_norm")(x)
    if c.tie_embeddings:
      head = embedding.astype(c.dtype).T
    else:
      head = self.param("lm_head", _init(c.init_std, ("embed", "vocab")),
                        (c.d_model, c.vocab_size), jnp.float32).astype(c.dtype)
    if return_hidden:
      return x, head
    return logits(x, head)


def init_params(model: Transformer, rng, seq_len: int, unbox: bool = True):
  """The model's initial params for `rng`, the same values whether its layers are scanned or
  unrolled: unrolled, they are drawn as the scanned model draws them (its per-layer keys) and
  split per layer, so runs that differ only in scan_layers start from the same weights (flax
  would otherwise derive each unrolled layer's keys from its name). With unbox=False they keep
  their logical-axis boxes (for jax.eval_shape, to derive shardings)."""
  tokens = jnp.zeros((1, seq_len), jnp.int32)
  if model.cfg.scan_layers:
    params = model.init(rng, tokens)["params"]
    return nn.unbox(params) if unbox else params
  scanned = Transformer(dataclasses.replace(model.cfg, scan_layers=True))
  values = unstack_layers(nn.unbox(scanned.init(rng, tokens)["params"]), model.cfg.n_layers)
  if unbox:
    return values
  boxed = model.init(rng, tokens)["params"]
  return jax.tree.map(lambda box, value: box.replace_boxed(value), boxed, values,
                      is_leaf=lambda x: isinstance(x, nn.meta.AxisMetadata))


def stack_layers(params, n_layers: int):
  """Unrolled params (layers_0 .. layers_{n-1}) -> the scanned layout (layers, stacked on axis 0)."""
  params = dict(params)
  layers = [params.pop(f"layers_{i}") for i in range(n_layers)]
  params["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
  return params


def unstack_layers(params, n_layers: int):
  """The scanned layout -> unrolled params (layers_0 .. layers_{n-1})."""
  params = dict(params)
  stacked = params.pop("layers")
  for i in range(n_layers):
    params[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return params
