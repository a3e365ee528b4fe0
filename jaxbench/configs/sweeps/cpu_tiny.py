"""A tiny sweep for a laptop CPU (about a minute): two model sizes x two batch sizes.

  jaxbench sweep --sweep=configs/sweeps/cpu_tiny.py --out=sweeps/cpu_tiny
  jaxbench report sweeps/cpu_tiny
"""


def get_sweep():
  return {
      "base": "configs/mpt.py:nano",
      "fixed": {"steps": 8, "warmup_steps_excluded": 3, "log_every": 0},
      "axes": {"preset": ["nano", "tiny"], "batch_size": [4, 8]},
      "timeout_s": 600,
  }
