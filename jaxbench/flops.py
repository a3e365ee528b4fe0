"""Training FLOPs per token, the convention MFU is computed with.

LLM Foundry and PaLM (Chowdhery et al. 2022, appendix B) count a training step as
  6 * N + 12 * n_layers * d_model * seq_len   FLOPs per token:
2 FLOPs per multiply-add, times 3 for forward + backward, over the N parameters that take part in
a matmul per token, plus the attention score and value matmuls (QK^T and PV, 2 matmuls of
seq_len x d_model per token and layer, forward 4 * S * d, times 3). Like LLM Foundry, attention is
counted without the causal halving, and rematerialization is not counted: MFU, not HFU.

N excludes the learned position table (a lookup), and, where embeddings are untied, the input
embedding table (also a lookup; its output projection twin is counted). With tied embeddings the
shared matrix is counted once, as LLM Foundry does.
"""

from __future__ import annotations

from jaxbench import model as model_lib

FORMULA = "6 * N_matmul + 12 * n_layers * d_model * seq_len"


def matmul_params(cfg: model_lib.ModelConfig) -> int:
  counts = model_lib.param_count(cfg)
  n = counts["total"] - counts["position"]
  if not cfg.tie_embeddings:
    n -= counts["embedding"]
  return n


def flops_per_token(cfg: model_lib.ModelConfig, seq_len: int) -> dict:
  n = matmul_params(cfg)
  attention = 12 * cfg.n_layers * cfg.d_model * seq_len
  return {"flops_per_token": 6 * n + attention, "formula": FORMULA, "n_matmul_params": n,
          "attention_flops_per_token": attention,
          "convention": "LLM Foundry / PaLM: training (fwd+bwd), no causal halving, remat not counted"}
