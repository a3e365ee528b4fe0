"""MPT 125m / 350m / 1b x global batch, bfloat16, seq 2048, on one GPU (LLM Foundry's sizes).

  jaxbench sweep --sweep=configs/sweeps/gpu_mpt.py --out=sweeps/gpu_mpt
  jaxbench report sweeps/gpu_mpt

The largest batch of each size: gpu_mpt_max_batch.py. More axes, for example:

  "model.remat": ["none", "dots", "full"],
  "model.attention": ["xla", "cudnn"],
  "env.XLA_FLAGS": ["", "--xla_gpu_enable_latency_hiding_scheduler=true"],
  "framework": ["jax", "torch"],
"""


def get_sweep():
  return {
      "base": "configs/mpt.py:125m",
      "fixed": {"dtype": "bfloat16", "seq_len": 2048, "steps": 30, "warmup_steps_excluded": 5,
                "log_every": 10},
      "axes": {"preset": ["125m", "350m", "1b"], "batch_size": [8, 16, 32]},
      "timeout_s": 900,
  }
