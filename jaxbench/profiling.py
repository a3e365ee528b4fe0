"""Seeing where the time goes: a jax.profiler trace of chosen steps, and the compiled step's HLO.

Both are off by default and cost nothing then (the loop compares two integers per step). The
trace lands in RUN_DIR/profile/ (TensorBoard's profile plugin or xprof read the .xplane.pb;
Perfetto's UI reads perfetto_trace.json.gz); the HLO in RUN_DIR/hlo/. run.json names the files.
"""

from __future__ import annotations

import os
import time

import jax

PROFILE_DIR = "profile"
HLO_DIR = "hlo"


class StepTrace:
  """Starts jax.profiler before step `first` is dispatched and stops it once step `last` is done.

  Steps are numbered as in metrics.jsonl (1 = the first step). With several processes each writes
  its own trace under profile/process_<i>/ (a host name alone can repeat on one machine)."""

  def __init__(self, workdir: str, steps: tuple[int, int] | None):
    self.steps = steps
    self.active = False
    self.overhead_s = 0.0  # starting and writing the trace: kept out of every step's time
    directory = os.path.join(workdir, PROFILE_DIR)
    if jax.process_count() > 1:
      directory = os.path.join(directory, f"process_{jax.process_index()}")
    self.directory = directory

  def traced(self, step: int) -> bool:
    return self.steps is not None and self.steps[0] <= step <= self.steps[1]

  def boundary(self, step: int) -> bool:
    """True for the step before the first traced one and for the last traced one: the loop must
    not queue the next step ahead of them (the trace starts before a dispatch and stops after a
    step is done; its own time is kept out of every step's)."""
    return self.steps is not None and step in (self.steps[0] - 1, self.steps[1])

  def before_dispatch(self, step: int) -> None:
    """Call right before step `step` is dispatched."""
    if self.steps is not None and step == self.steps[0] and not self.active:
      t0 = time.perf_counter()
      os.makedirs(self.directory, exist_ok=True)
      jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
      self.active = True
      self.overhead_s += time.perf_counter() - t0

  def after_step(self, step: int) -> None:
    """Call once step `step`'s outputs are on the host."""
    if self.active and step >= self.steps[1]:
      self.stop()

  def stop(self) -> None:
    if self.active:
      t0 = time.perf_counter()
      jax.profiler.stop_trace()
      self.active = False
      self.overhead_s += time.perf_counter() - t0

  def describe(self, workdir: str) -> dict | None:
    """For run.json: the traced steps and the files written, relative to the run directory."""
    if self.steps is None:
      return None
    files = []
    for root, _, names in os.walk(self.directory):
      files += [os.path.relpath(os.path.join(root, n), workdir) for n in names]
    return {"steps": list(self.steps), "tool": "jax.profiler",
            "dir": os.path.relpath(self.directory, workdir), "files": sorted(files),
            "note": "traced steps are left out of the timing summary (tracing slows them); "
                    "open the .xplane.pb with TensorBoard's profile plugin or xprof, "
                    "perfetto_trace.json.gz with ui.perfetto.dev"}


def dump_hlo(workdir: str, lowered, optimized_text: str) -> dict:
  """Writes the step's StableHLO (before XLA) and optimized HLO (after XLA's passes, as it runs);
  returns the file names relative to the run directory, for run.json."""
  directory = os.path.join(workdir, HLO_DIR)
  os.makedirs(directory, exist_ok=True)
  files = {"optimized_hlo": os.path.join(HLO_DIR, "train_step.optimized.hlo.txt"),
           "stablehlo": os.path.join(HLO_DIR, "train_step.stablehlo.mlir")}
  texts = {"optimized_hlo": optimized_text, "stablehlo": lowered.as_text()}
  for key, name in files.items():
    with open(os.path.join(workdir, name), "w") as f:
      f.write(texts[key])
  return files
