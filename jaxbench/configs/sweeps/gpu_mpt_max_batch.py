"""The largest global batch that fits one GPU for MPT 125m / 350m / 1b (bfloat16, seq 2048), then
a measured run of each at that batch.

  jaxbench sweep --sweep=configs/sweeps/gpu_mpt_max_batch.py --out=sweeps/gpu_mpt_max_batch
  jaxbench report sweeps/gpu_mpt_max_batch

The search tries multiples of batch_size (8 sequences): 8, 16, 32, ... up to 32 x 8 = 256, with
3-step runs, then bisects between the last that fit and the first that ran out of memory.
"""


def get_sweep():
  return {
      "base": "configs/mpt.py:125m",
      "fixed": {"dtype": "bfloat16", "seq_len": 2048, "batch_size": 8, "steps": 20,
                "warmup_steps_excluded": 5, "log_every": 10},
      "axes": {"preset": ["125m", "350m", "1b"]},
      "max_batch": {"steps": 3, "limit": 32, "timeout_s": 600},
      "timeout_s": 900,
  }
