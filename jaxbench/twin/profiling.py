"""`profile_steps` for the PyTorch twin: torch.profiler over those steps, as jaxbench/profiling.py's
StepTrace does with jax.profiler for JAX. It writes, under RUN_DIR/profile/ (profile/process_<rank>/
with several processes), a Chrome trace (open in ui.perfetto.dev or chrome://tracing) and a table
of the ops that took the most time (torch.profiler's key_averages: self time on the device where
there is one, else on the CPU), and names them in run.json's `profile`; `python -m
jaxbench.profiling RUN_DIR` prints that table.
"""

from __future__ import annotations

import os

from jaxbench import profiling

TRACE_FILE = "torch_trace.json"
TABLE_FILE = "top_ops.txt"
TABLE_ROWS = 40


class TorchStepTrace(profiling.TraceWindow):
  """Starts torch.profiler right before step `first` runs and stops it once step `last` is done
  (steps numbered as in metrics.jsonl). Starting and writing the trace happen inside traced
  steps' times only, and traced steps are left out of the summary."""

  def __init__(self, torch, workdir: str, steps: tuple[int, int] | None, rank: int = 0,
               world: int = 1, cuda: bool = False):
    super().__init__(workdir, steps, rank, world)
    self.torch, self.cuda = torch, cuda
    self.profiler = None

  def before_dispatch(self, step: int) -> None:
    if self.steps is None or step != self.steps[0] or self.profiler is not None:
      return
    activities = [self.torch.profiler.ProfilerActivity.CPU]
    if self.cuda:
      activities.append(self.torch.profiler.ProfilerActivity.CUDA)
    self.profiler = self.torch.profiler.profile(activities=activities)
    self.profiler.start()

  def after_step(self, step: int) -> None:
    """Call once step `step` is done (its loss read, the device synchronized)."""
    if self.profiler is not None and step >= self.steps[1]:
      self.stop()

  def stop(self) -> None:
    if self.profiler is None:
      return
    profiler, self.profiler = self.profiler, None
    profiler.stop()
    os.makedirs(self.directory, exist_ok=True)
    profiler.export_chrome_trace(os.path.join(self.directory, TRACE_FILE))
    sort = "self_cuda_time_total" if self.cuda else "self_cpu_time_total"
    table = profiler.key_averages().table(sort_by=sort, row_limit=TABLE_ROWS)
    first, last = self.steps
    with open(os.path.join(self.directory, TABLE_FILE), "w") as f:
      f.write(f"torch ops of steps {first}-{last} by self {'CUDA' if self.cuda else 'CPU'} time "
              f"(torch.profiler key_averages, {last - first + 1} step(s))\n{table}\n")

  def describe(self, workdir: str) -> dict | None:
    """For run.json: the traced steps and the files written, relative to the run directory."""
    if self.steps is None:
      return None
    return profiling.trace_record(workdir, self.directory, self.steps, "torch.profiler",
                                  f"open {TRACE_FILE} with ui.perfetto.dev or chrome://tracing; "
                                  f"{TABLE_FILE} lists the ops by self time")
