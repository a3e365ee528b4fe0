"""MPT / GPT-style decoder (LLM Foundry's MPT family): LayerNorm, GELU MLP of ratio 4, learned
positions (or ALiBi with --config.model.position=alibi), tied embeddings, no biases.

Usage: --config=configs/mpt.py:<preset>, e.g. configs/mpt.py:125m. The default preset `tiny` runs
on a laptop CPU in about a minute.
"""

from jaxbench import config as base

# preset: (d_model, n_layers, n_heads). Sizes from LLM Foundry's MPT table
# (mosaicml/llm-foundry scripts/train/yamls/pretrain/mpt-*.yaml): vocab 50368, seq_len 2048.
PRESETS = {
    "125m": (768, 12, 12),
    "350m": (1024, 24, 16),
    "760m": (1536, 24, 12),
    "1b": (2048, 24, 16),
    "3b": (2560, 32, 20),
    "7b": (4096, 32, 32),
    "13b": (5120, 40, 40),
    "30b": (7168, 48, 56),
    "70b": (8192, 80, 64),
}

# Small presets for CPU runs and tests: (d_model, n_layers, n_heads, vocab, seq_len, batch).
TINY_PRESETS = {
    "nano": (64, 2, 4, 256, 64, 8),
    "tiny": (128, 4, 4, 512, 128, 8),
    "small": (384, 6, 6, 8192, 256, 8),
}


def get_config(preset: str = "tiny"):
  c = base.base_config()
  c.family = "mpt"
  c.preset = preset
  m = c.model
  m.position = "learned"
  m.norm = "layernorm"
  m.mlp = "gelu"
  m.bias = False
  m.tie_embeddings = True
  m.max_seq_len = 2048
  if preset in PRESETS:
    m.d_model, m.n_layers, m.n_heads = PRESETS[preset]
    m.vocab_size = 50368
    c.seq_len = 2048
    c.dtype = "bfloat16"
    c.batch_size = 8
    c.steps = 30
    c.optimizer.lr = 3e-4
  elif preset in TINY_PRESETS:
    m.d_model, m.n_layers, m.n_heads, m.vocab_size, c.seq_len, c.batch_size = TINY_PRESETS[preset]
    # The loss by chunks of 128 positions on these CPU presets (base.CPU_LOSS_CHUNK_SIZE); tiny's
    # and nano's default sequences are no longer, so their loss is the plain one.
    c.loss_chunk_size = base.CPU_LOSS_CHUNK_SIZE
  else:
    raise base.unknown_preset("mpt", preset, [*TINY_PRESETS, *PRESETS])
  m.n_kv_heads = m.n_heads
  m.d_ff = 4 * m.d_model
  return c
