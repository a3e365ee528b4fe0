def get_sweep():
  return {"base": "configs/mpt.py:nano",
          "fixed": {"steps": 20, "warmup_steps_excluded": 3, "log_every": 0, "dtype": "bfloat16"},
          "axes": {"preset": ["nano", "tiny"]}, "repeats": 3, "timeout_s": 600}
