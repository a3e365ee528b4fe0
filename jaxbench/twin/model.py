"""The decoder-only transformer in PyTorch: a mirror image of jaxbench/model.py, class for class.

Data flows top to bottom: attention helpers, Attention, Mlp, norm, Block, Transformer.
MPT: LayerNorm, learned positions or ALiBi, exact-GELU MLP, tied embeddings.
Llama: RMSNorm, rotary embeddings (Hugging Face half-split), SwiGLU, grouped-query attention.

Module and parameter names follow the Flax tree (attention.query, mlp.down, final_norm, ...) so
convert.py is a table, not a puzzle. Linear weights are [out, in] (torch's convention); the
converter transposes. Parameters are float32; with bfloat16 the train loop runs the model under
autocast. Attention is F.scaled_dot_product_attention (causal, grouped-query heads without copies).
The model knows nothing of devices or parallelism: train.py applies DDP / FSDP2 / compile.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import checkpoint as torch_checkpoint

from jaxbench.model import ModelConfig  # one config for both frameworks


# --- attention helpers: q [B, H, S, D], k/v [B, K, S, D] -> [B, H, S, D] (causal) ----------------

def alibi_slopes(n_heads: int) -> torch.Tensor:
  """ALiBi's slope of each head, [H] float32 (model.alibi_bias's slopes, MPT's alibi_bias_max 8)."""
  padded = 2 ** math.ceil(math.log2(n_heads))
  m = torch.arange(1, padded + 1, dtype=torch.float32) * (8.0 / padded)
  slopes = 1.0 / torch.pow(2.0, m)
  if padded != n_heads:
    slopes = torch.cat([slopes[1::2], slopes[::2]])[:n_heads]
  return slopes


def alibi_mask(slopes: torch.Tensor, seq_len: int) -> torch.Tensor:
  """ALiBi biases of the heads of `slopes` with the causal mask folded in, [1, H, S, S] float32:
  -slope_h * (i - j) where j <= i, -inf above the diagonal."""
  pos = torch.arange(seq_len, dtype=torch.float32, device=slopes.device)
  distance = pos[:, None] - pos[None, :]
  bias = -slopes[:, None, None] * distance[None]
  causal = torch.ones(seq_len, seq_len, dtype=torch.bool, device=slopes.device).tril()
  return bias.masked_fill(~causal, float("-inf"))[None]


def rotary_tables(head_dim: int, seq_len: int, theta: float, device=None):
  """cos, sin [S, D] float32 for positions 0..S-1 (model.rotary's frequencies)."""
  inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device)
                              / head_dim))
  angles = torch.arange(seq_len, dtype=torch.float32, device=device)[:, None] * inv_freq
  return torch.cat([angles.cos()] * 2, dim=-1), torch.cat([angles.sin()] * 2, dim=-1)


def rotary(x, cos, sin):
  """Rotary embedding, Hugging Face convention (halves, not interleaved); math in float32."""
  x32 = x.float()
  x1, x2 = x32.chunk(2, dim=-1)
  return (x32 * cos + torch.cat([-x2, x1], dim=-1) * sin).to(x.dtype)


class Attention(nn.Module):

  def __init__(self, cfg: ModelConfig):
    super().__init__()
    self.cfg = cfg
    d, hd = cfg.d_model, cfg.head_dim
    self.query = nn.Linear(d, cfg.n_heads * hd, bias=cfg.bias)
    self.key = nn.Linear(d, cfg.n_kv_heads * hd, bias=cfg.bias)
    self.value = nn.Linear(d, cfg.n_kv_heads * hd, bias=cfg.bias)
    self.out = nn.Linear(cfg.n_heads * hd, d, bias=cfg.bias)

  def forward(self, x, rope, mask):
    c = self.cfg
    b, s, _ = x.shape
    # Heads counted from the projections' widths (-1): under tensor parallelism each process
    # holds a slice of the heads (twin/parallelize.py), and the same code runs its slice.
    q = self.query(x).view(b, s, -1, c.head_dim)
    k = self.key(x).view(b, s, -1, c.head_dim)
    v = self.value(x).view(b, s, -1, c.head_dim)
    if rope is not None:
      cos, sin = rope[0][:, None, :], rope[1][:, None, :]
      q, k = rotary(q, cos, sin), rotary(k, cos, sin)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=None if mask is None else mask.to(q.dtype), is_causal=mask is None,
        enable_gqa=c.n_kv_heads != c.n_heads)
    return self.out(out.transpose(1, 2).reshape(b, s, -1))


class Mlp(nn.Module):

  def __init__(self, cfg: ModelConfig):
    super().__init__()
    self.swiglu = cfg.mlp == "swiglu"
    if self.swiglu:
      self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
    self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
    self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)

  def forward(self, x):
    if self.swiglu:
      h = F.silu(self.gate(x)) * self.up(x)
    else:
      h = F.gelu(self.up(x))  # exact (erf) GELU, as nn.gelu(approximate=False)
    return self.down(h)


def norm(cfg: ModelConfig) -> nn.Module:
  if cfg.norm == "rmsnorm":
    return nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
  return nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)


class Block(nn.Module):
  """Pre-norm residual block."""

  def __init__(self, cfg: ModelConfig):
    super().__init__()
    self.attention_norm = norm(cfg)
    self.attention = Attention(cfg)
    self.mlp_norm = norm(cfg)
    self.mlp = Mlp(cfg)

  def forward(self, x, rope, mask):
    x = x + self.attention(self.attention_norm(x), rope, mask)
    return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
  """tokens [B, S] int64 -> logits [B, S, vocab] float32."""

  def __init__(self, cfg: ModelConfig):
    super().__init__()
    self.cfg = cfg
    self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
    if cfg.position == "learned":
      self.position_embedding = nn.Embedding(cfg.max_seq_len, cfg.d_model)
    if cfg.position == "alibi":
      # Not state: made from n_heads. Under tensor parallelism, this process's heads' slopes.
      self.register_buffer("alibi_slopes", alibi_slopes(cfg.n_heads), persistent=False)
    self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
    self.final_norm = norm(cfg)
    if not cfg.tie_embeddings:
      self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
    # Full activation checkpointing of each block for any remat policy but none (torch has no
    # per-op save policy like JAX's dots; run.json says so).
    self.remat = cfg.remat != "none"

  def forward(self, tokens):
    c = self.cfg
    s = tokens.shape[1]
    x = self.embedding(tokens)
    if c.position == "learned":
      # Looked up by position, as the JAX model does (and as a module call, which tensor
      # parallelism's hooks see).
      x = x + self.position_embedding(torch.arange(s, device=tokens.device))[None]
    rope = rotary_tables(c.head_dim, s, c.rope_theta, x.device) if c.position == "rope" else None
    mask = alibi_mask(self.alibi_slopes, s) if c.position == "alibi" else None
    for layer in self.layers:
      if self.remat and self.training:
        x = torch_checkpoint.checkpoint(layer, x, rope, mask, use_reentrant=False)
      else:
        x = layer(x, rope, mask)
    x = self.final_norm(x)
    head = self.embedding.weight if c.tie_embeddings else self.lm_head.weight
    return F.linear(x, head).float()


@torch.no_grad()
def init_weights(model: Transformer, seed: int) -> None:
  """Draws the JAX model's distributions natively (not its values): normal(init_std) kernels and
  tables, residual output projections scaled by 1/sqrt(2 n_layers), zero biases, unit norms."""
  c = model.cfg
  generator = torch.Generator(device="cpu").manual_seed(seed)
  residual_std = c.init_std / math.sqrt(2 * c.n_layers)
  for name, p in model.named_parameters():
    leaf = name.rsplit(".", 1)[-1]
    if "norm" in name:
      p.fill_(1.0 if leaf == "weight" else 0.0)
    elif leaf == "bias":
      p.zero_()
    else:
      std = residual_std if name.endswith(("attention.out.weight", "mlp.down.weight")) else c.init_std
      p.copy_(torch.randn(p.shape, generator=generator) * std)


def cross_entropy(logits, targets):
  """Mean next-token cross-entropy in float32 (step.cross_entropy)."""
  return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
