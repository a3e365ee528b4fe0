"""Llama-style decoder: RMSNorm, rotary embeddings (Hugging Face half-split convention), SwiGLU,
grouped-query attention, untied embeddings.

Usage: --config=configs/llama.py:<preset>, e.g. configs/llama.py:1b.
"""

from jaxbench import config as base

# preset: (d_model, n_layers, n_heads, n_kv_heads, d_ff). Llama-3-like shapes (Meta's Llama 3.2 1B
# and 3B, Llama 3.1 8B model cards): vocab 128256, rope theta 500000. Embeddings untied here.
PRESETS = {
    "1b": (2048, 16, 32, 8, 8192),
    "3b": (3072, 28, 24, 8, 8192),
    "8b": (4096, 32, 32, 8, 14336),
}

# Small presets for CPU runs and tests: (d_model, n_layers, n_heads, n_kv_heads, d_ff, vocab, seq, batch).
TINY_PRESETS = {
    "nano": (64, 2, 4, 2, 192, 256, 64, 8),
    "tiny": (128, 4, 4, 2, 384, 512, 128, 8),
    "small": (384, 6, 6, 2, 1024, 8192, 256, 8),
}


def get_config(preset: str = "tiny"):
  c = base.base_config()
  c.family = "llama"
  c.preset = preset
  m = c.model
  m.position = "rope"
  m.norm = "rmsnorm"
  m.mlp = "swiglu"
  m.bias = False
  m.tie_embeddings = False
  m.max_seq_len = 8192
  if preset in PRESETS:
    m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.d_ff = PRESETS[preset]
    m.vocab_size = 128256
    m.rope_theta = 500000.0
    c.seq_len = 2048
    c.dtype = "bfloat16"
    c.batch_size = 8
    c.steps = 30
    c.optimizer.lr = 3e-4
  elif preset in TINY_PRESETS:
    (m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.d_ff, m.vocab_size, c.seq_len,
     c.batch_size) = TINY_PRESETS[preset]
    # The loss by chunks of 128 positions on these CPU presets (base.CPU_LOSS_CHUNK_SIZE); tiny's
    # and nano's default sequences are no longer, so their loss is the plain one.
    c.loss_chunk_size = base.CPU_LOSS_CHUNK_SIZE
  else:
    raise base.unknown_preset("llama", preset, [*TINY_PRESETS, *PRESETS])
  return c
