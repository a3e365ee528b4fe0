"""Per-device memory of a training step, predicted from the config and the mesh alone.

What a user asks before renting a device: will this fit, and what takes the space? The prediction
adds up the train state (float32 params, gradients, AdamW's two moments), the activations the
backward pass keeps (by remat policy), the logits and the working set of one layer. It is checked
against XLA's memory analysis of the compiled step by benchmarks/memory.py.

Activations kept per token per layer, by policy (a = bytes of the compute dtype, d = d_model,
kv = key/value width, f = d_ff, h = heads, S = seq_len, t = mesh.tensor), as XLA's buffer
assignment of the scanned step keeps them (read off the stacked residuals of the compiled step for
an H100, mpt and llama, bf16 and f32):
  none           each layer norm's input (ad) and two float32 statistics: kernels.normalize
                 recomputes the rest from them, and kernels.normalized_matmuls the normalized
                 tensor the q/k/v and MLP matmuls take; q/k/v (a(d + 2kv)/t); the attention's own
                 state, the softmax statistics (4h/t): the fused kernel (cuDNN) and the einsum
                 attention (kernels.causal_attention) both recompute the probabilities; the
                 attention output (ad/t); the MLP's pre-activations (GELU: af/t; SwiGLU: gate and
                 up, 2af/t; kernels.activated_matmul recomputes the activation)
  full           only the block input (ad): each block is recomputed in the backward pass
  dots           the block input and every matmul output: q/k/v, the scores (float32, 4hS/t, not
                 with the fused kernel; the einsum attention's blocks skip the scores above the
                 diagonal: kernels.scores_fraction of them), the attention output, the output
                 projection (ad), the MLP's up (and gate) and down
  dots_no_batch  as dots without the two attention matmuls (they have batch dimensions)
Policies other than none also hold part of one layer's full set (half, fitted) while that layer
is recomputed in the backward pass.

model.impl=reference (plain jnp, autodiff: docs/kernels.md) keeps more in the full set: three
float32 copies of each norm's normalized tensor (24d), the einsum attention's probabilities
(float32, and rounded to the compute dtype where that is narrower: (4 + a)hS/t, the blocks'
share of them), and the MLP's activation state (GELU: four float32 hidden-size tensors, 16f/t;
SwiGLU: the output and four more in the compute dtype, 5af/t). Compiled for a CPU (mpt and llama
tiny, seq 256, remat none) these are 91-92% of the difference in XLA's peaks in float32 and
57-78% in bfloat16, where XLA's CPU backend also keeps float32 copies for its widened bf16
matmuls; not yet checked against a GPU's compiled step.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxbench import kernels
from jaxbench import model as model_lib
from jaxbench import sharding

DTYPE_BYTES = {"float32": 4, "bfloat16": 2}
GIB = 1024 ** 3


def _shard_bytes(boxed_params, mesh_shape: dict[str, int]) -> int:
  """Bytes per device of float32 params sharded by the logical axis rules on a mesh this shape."""
  specs = nn.get_partition_spec(boxed_params)
  leaves = jax.tree.leaves(nn.unbox(boxed_params))
  spec_leaves = jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
  total = 0
  for leaf, spec in zip(leaves, spec_leaves):
    mesh_spec = sharding.logical_to_spec(tuple(spec))
    elements = 1
    for i, dim in enumerate(leaf.shape):
      axes = mesh_spec[i] if i < len(mesh_spec) else None
      axes = (axes,) if isinstance(axes, str) else (axes or ())
      elements *= -(-dim // math.prod(mesh_shape[a] for a in axes))
    total += elements * leaf.dtype.itemsize
  return total


@functools.lru_cache(maxsize=64)
def _param_bytes(cfg: model_lib.ModelConfig, mesh_items: tuple) -> int:
  """Per-device bytes of the params (their shapes traced, nothing allocated)."""
  boxed = jax.eval_shape(lambda: model_lib.Transformer(cfg).init(
      jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))["params"]
  return _shard_bytes(boxed, dict(mesh_items))


def _autodiff_extra_bytes_per_token(c, tensor: int, fused_attention: bool,
                                    blocks: float) -> float:
  """What autodiff of the plain layers (model.impl=reference) keeps per token per layer beyond
  the custom VJPs' full set, in bytes (module docstring)."""
  m = c.model
  a = DTYPE_BYTES[c.dtype]
  d, f, h, s = m.d_model, m.d_ff, m.n_heads, c.seq_len
  norms = 2 * 3 * 4 * d
  probabilities = 0 if fused_attention else (4 + (a if a < 4 else 0)) * h * s * blocks / tensor
  activation = (5 * a if m.mlp == "swiglu" else 16) * f / tensor
  return norms + probabilities + activation


def _activation_bytes_per_token(c, policy: str, tensor: int, fused_attention: bool,
                                attention_block: int) -> tuple[float, float]:
  """(kept per token per layer, one layer's full set per token) in bytes."""
  m = c.model
  a = DTYPE_BYTES[c.dtype]
  d, f, h, s = m.d_model, m.d_ff, m.n_heads, c.seq_len
  kv = m.n_kv_heads * (d // m.n_heads)
  qkv = a * (d + 2 * kv) / tensor
  norms = 2 * (a * d + 8)
  attention_state = 4 * h / tensor  # the softmax statistics (cuDNN; kernels.causal_attention's)
  up_outputs = (2 if m.mlp == "swiglu" else 1) * a * f / tensor  # the MLP's pre-activations
  # The fused kernel is a custom call, not a dot: under the dots policies it is recomputed.
  blocks = kernels.scores_fraction(s, kernels.query_block_rows(s, attention_block))
  full_set = norms + qkv + attention_state + a * d / tensor + up_outputs
  if m.get("impl", "tuned") == "reference":
    full_set += _autodiff_extra_bytes_per_token(c, tensor, fused_attention, blocks)
  attention_dots = 0 if fused_attention else 4 * h * s * blocks / tensor + a * d / tensor
  kept = {
      "none": full_set,
      "full": a * d,
      "dots": a * d + qkv + attention_dots + a * d + up_outputs + a * d,
      "dots_no_batch": a * d + qkv + a * d + up_outputs + a * d,
  }[policy]
  return kept, full_set


def predict(c, mesh_shape: dict[str, int], attention: str | None = None) -> dict:
  """Predicted bytes per device of the train step for config `c` on a mesh of this shape, with
  `attention` the implementation that runs (train.choose_attention; default: the config's, and
  XLA's einsum attention for auto, the larger of the two)."""
  m = c.model
  cfg = model_lib.ModelConfig.from_config(c, "xla")
  params = _param_bytes(cfg, tuple(sorted(mesh_shape.items())))
  tensor = mesh_shape["tensor"]
  batch_per_device = c.batch_size // (mesh_shape["data"] * mesh_shape["fsdp"] * c.microbatches)
  tokens = batch_per_device * c.seq_len
  attention = attention or m.attention
  fused = attention in ("cudnn", "pallas", "pallas-interpret")  # no scores kept
  kept, full_set = _activation_bytes_per_token(c, m.remat, tensor, fused, cfg.attention_block)
  a = DTYPE_BYTES[c.dtype]
  # The output layer's matmul writes the logits in the compute dtype (model.logits; the loss widens
  # them to float32 as it reads them), and the backward pass holds them and their gradient, also
  # in the compute dtype.
  logit_positions = (c.loss_chunk_size if 0 < c.loss_chunk_size < c.seq_len else c.seq_len)
  logits = batch_per_device * logit_positions * (m.vocab_size // tensor) * 2 * a
  parts = {
      "params": params,
      "gradients": params * (2 if c.microbatches > 1 else 1),  # + the accumulator
      "optimizer_state": 2 * params,  # AdamW's first and second moments, float32
      "activations": int(kept * tokens * m.n_layers),
      # The backward pass consumes the recomputed layer as it goes: about half of its full set
      # is live at once (fitted to XLA's figures: benchmarks/RESULTS.md, goal 4).
      "recompute_layer": int(full_set * tokens / 2) if m.remat != "none" else 0,
      "logits": logits,
      # Embedding output, final norm in and out.
      "embedding_and_final_norm": 3 * a * m.d_model * tokens,
  }
  parts["total"] = sum(parts.values())
  parts["floor_state"] = params + parts["gradients"] + parts["optimizer_state"]
  return parts


def xla_peak(memory_analysis: dict) -> int | None:
  """XLA's peak bytes per device for a compiled step: arguments + outputs - aliased (donated)
  + temporaries."""
  if not memory_analysis or "temp_size_in_bytes" not in memory_analysis:
    return None
  return (memory_analysis["argument_size_in_bytes"] + memory_analysis["output_size_in_bytes"]
          - memory_analysis.get("alias_size_in_bytes", 0) + memory_analysis["temp_size_in_bytes"])


def xla_total(memory_analysis: dict) -> int | None:
  """xla_peak plus the generated code: the per-device total `jaxbench compile` reports."""
  peak = xla_peak(memory_analysis)
  return None if peak is None else peak + memory_analysis.get("generated_code_size_in_bytes", 0)


def fit_problem(memory_analysis: dict, available: int | None, copies: int, where: str
                ) -> str | None:
  """Why the compiled step (XLA's memory analysis, per device) cannot run in `available` bytes
  shared by `copies` devices' worth (a CPU's devices share the host: their count, times the
  run's processes on it), with what would make it fit; None when it fits or nothing is known.
  `where` names the memory ("each device", "this host")."""
  total = xla_total(memory_analysis)
  if total is None or not available:
    return None
  need = total * copies
  if need <= available:
    return None
  state = memory_analysis["argument_size_in_bytes"] * copies
  temps = memory_analysis["temp_size_in_bytes"] * copies
  if state > available:
    hint = ("the train state alone is larger: shard it over more devices (mesh.fsdp) or take a "
            "smaller preset")
  else:
    hint = ("the temporaries are what does not fit: model.remat=full, more microbatches or a "
            "smaller batch_size cut them")
  return (f"the compiled step needs {need / GIB:.2f} GiB ({state / GIB:.2f} GiB of train state and "
          f"batch, {temps / GIB:.2f} GiB of temporaries; XLA's memory analysis) where {where} has "
          f"{available / GIB:.2f} GiB free; {hint}; --config.memory_check=False runs it anyway")
