"""The decoder-only transformer (Flax linen), both families from one set of modules.

Data flows top to bottom: ModelConfig, attention kernels, Attention, Mlp, Block, Transformer.
The layers' hand-written backward passes (custom VJPs) are in kernels.py.
MPT: LayerNorm, learned positions or ALiBi, GELU MLP, tied embeddings.
Llama: RMSNorm, rotary embeddings (Hugging Face half-split), SwiGLU, grouped-query attention.

Parameters are float32 and carry logical axis names (sharding.py maps them to the mesh); compute
runs in `dtype`, every matmul accumulating in float32 (kernels.matmul); layer norms, softmax and
the loss run in float32. The model knows nothing of meshes: it only names axes.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbench import compat, kernels, sharding

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
  impl: str = "tuned"  # tuned: kernels.py's custom VJPs | reference: plain jnp, autodiff

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
               attention_block=m.get("attention_block", 0),  # absent from older run.json
               impl=m.get("impl", "tuned"))


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


def xla_attention(q, k, v, bias=None, block: int = 0, impl: str = "tuned"):
  """Causal attention in einsums, grouped-query heads without copies; scores and softmax in
  float32, by blocks of `block` query rows (0: query_block_rows's choice). Tuned, its backward
  (kernels.causal_attention) keeps the softmax's log-normalizer, not the [S, S] probabilities."""
  b, s, h, d = q.shape
  kv = k.shape[2]
  attend = kernels.IMPLEMENTATIONS[impl].causal_attention
  out = attend(q.reshape(b, s, kv, h // kv, d), k, v, bias, kernels.query_block_rows(s, block))
  return out.reshape(b, s, h, d)


def attention_blocks(seq_len: int, block: int = 0) -> dict:
  """What the xla attention computes at this length (run.json's `attention`): its query blocks'
  rows, how many, and the share of the [S, S] scores they compute."""
  rows = kernels.query_block_rows(seq_len, block)
  return {"query_block_rows": rows, "query_blocks": len(kernels.query_blocks(seq_len, rows)),
          "scores_computed": round(kernels.scores_fraction(seq_len, rows), 4)}


def attention_blocks_text(info: dict) -> str | None:
  """attention_blocks' figures, as run.json's `attention` holds them, in words ("4 blocks of 64
  query rows, 62.5% of the scores"); None for one block or another attention."""
  if info.get("query_blocks", 1) == 1:
    return None
  return (f"{info['query_blocks']} blocks of {info['query_block_rows']} query rows, "
          f"{info['scores_computed']:.1%} of the scores")


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
  pallas_gpu, missing = compat.pallas_triton_attention()
  if missing:
    raise ValueError(missing)  # pallas_problem said so before anything was built
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
  """Why the Pallas attention cannot take this config (its blocks) or this JAX, or None."""
  _, missing = compat.pallas_triton_attention()
  if missing:
    return missing
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
  over B*S rows, whose weight gradients XLA's CPU backend forms without first writing the hidden
  gradient transposed (docs/kernels.md, "Weight gradients"). The reshapes are bitcasts."""
  b, s = xs[0].shape[:2]
  ys = layer(*(x.reshape(b * s, *x.shape[2:]) for x in xs))
  return jax.tree.map(lambda y: y.reshape(b, s, *y.shape[1:]), ys)


class Projection(nn.Module):
  """The kernel and bias of nn.DenseGeneral(features) over an input's trailing `in_features`
  axes: the same names, shapes, initial values and logical axes, for an op that applies them itself
  (kernels.normalized_matmuls, kernels.matmul): the kernel in float32, which that op casts to the
  compute dtype itself, the bias in the compute dtype."""
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
  matrices, biases = zip(*weights)
  return tuple(y if bias is None else y + bias for y, bias in zip(norm(x, matrices), biases))


class Attention(nn.Module):
  """Self-attention on norm(x): the block's Norm is applied here, fused with the q/k/v matmuls
  (kernels.normalized_matmuls), so the tuned backward pass recomputes the normalized input."""
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
      attend = functools.partial(attend, block=c.attention_block, impl=c.impl)
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
    # The "xla" attention keeps its output head-major, another array (kernels.causal_attention).
    out = kernels.IMPLEMENTATIONS[c.impl].matmul("bshd,hde->bse", out, kernel, c.attention == "xla")
    return out if out_bias is None else out + out_bias


class ActivatedDense(nn.Module):
  """nn.Dense (same parameters, dtypes and result) applied to activation(*hs):
  kernels.activated_matmul."""
  features: int
  activation: str
  use_bias: bool
  dtype: Any
  kernel_init: Any
  bias_init: Any
  impl: str = "tuned"  # model.impl: which activated_matmul (kernels.IMPLEMENTATIONS)

  @nn.compact
  def __call__(self, *hs):
    kernel = self.param("kernel", self.kernel_init, (hs[0].shape[-1], self.features), jnp.float32)
    hs = tuple(h.astype(self.dtype) for h in hs)
    y = kernels.IMPLEMENTATIONS[self.impl].activated_matmul(self.activation, hs, kernel)
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
                          _zeros(("embed",)), c.impl, name="down")
    return over_tokens(down, *hs)


class Norm(nn.Module):
  """LayerNorm or RMSNorm with flax's parameter names (scale, bias) and math (kernels.normalize)."""
  rms: bool
  epsilon: float
  use_bias: bool
  dtype: Any
  impl: str = "tuned"  # model.impl: which normalize (kernels.IMPLEMENTATIONS)

  @nn.compact
  def __call__(self, x, matrices: tuple | None = None):
    """norm(x); with matrices ([d, ...] each, float32), the tuple of norm(x) contracted with each,
    by kernels.normalized_matmuls."""
    d = x.shape[-1]
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
                       (d,), jnp.float32)
    bias = None
    if not self.rms and self.use_bias:
      bias = self.param("bias", _zeros(("norm",)), (d,), jnp.float32)
    ops = kernels.IMPLEMENTATIONS[self.impl]
    if matrices is None:
      return ops.normalize(x, scale, bias, self.epsilon, self.rms, self.dtype)
    return ops.normalized_matmuls(x, scale, bias, matrices, self.epsilon, self.rms, self.dtype)


def norm(c: ModelConfig, name: str) -> nn.Module:
  return Norm(rms=c.norm == "rmsnorm", epsilon=c.norm_eps, use_bias=c.bias, dtype=c.dtype,
              impl=c.impl, name=name)


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


def logits(x, head, impl: str = "tuned"):
  """Final hidden states [B, S, d] x output matrix [d, vocab] -> float32 logits [B, S, vocab].
  The matmul writes them in the compute dtype, as PyTorch's autocast does (the twin's
  `F.linear(x, head).float()`): in bfloat16 the output layer's matmul writes half the bytes, and
  each pass of the loss over them reads half, while the loss still computes in float32 (XLA fuses
  the widening into its reductions). The backward rounds the float32 gradient to the compute dtype
  before both of the layer's matmuls, as every other layer's does."""
  out = kernels.IMPLEMENTATIONS[impl].matmul("bsd,dv->bsv", x, head, False).astype(jnp.float32)
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
    return logits(x, head, c.impl)


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
