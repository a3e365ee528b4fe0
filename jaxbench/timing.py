"""Step-time statistics. A step's time is wall time from the previous step's outputs being ready
to this step's outputs being ready, so everything the loop does between steps is paid for."""

from __future__ import annotations

import numpy as np


def summarize(step_times: list[float]) -> dict[str, float | None]:
  if not step_times:
    return {"step_time_s_median": None, "step_time_s_p10": None, "step_time_s_p90": None,
            "step_time_s_mean": None}
  t = np.asarray(step_times, dtype=np.float64)
  return {"step_time_s_median": float(np.median(t)), "step_time_s_p10": float(np.percentile(t, 10)),
          "step_time_s_p90": float(np.percentile(t, 90)), "step_time_s_mean": float(t.mean())}


def format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  if seconds < 60:
    return f"{seconds}s"
  if seconds < 3600:
    return f"{seconds // 60}m{seconds % 60:02d}s"
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
