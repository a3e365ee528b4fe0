"""Seeing where the time goes: a jax.profiler trace of chosen steps, and the compiled step's HLO.

Both are off by default and cost nothing then (the loop compares two integers per step). The
trace lands in RUN_DIR/profile/ (TensorBoard's profile plugin or xprof read the .xplane.pb;
Perfetto's UI reads perfetto_trace.json.gz); the HLO in RUN_DIR/hlo/. run.json names the files.

  jaxbench profile RUN_DIR [--top=25]      (also: python -m jaxbench.profiling)

prints the XLA ops that took the most time in the traced steps, with the model code each came
from (from the HLO's metadata when the run also had dump_hlo=True).
"""

from __future__ import annotations

import collections
import json
import os
import re
import sys

import jax

from jaxbench import cli, hlo
from jaxbench.errors import BadInput, bad_input

PROFILE_DIR = "profile"
HLO_DIR = "hlo"


class TraceWindow:
  """The steps a trace covers (numbered as in metrics.jsonl, 1 = the first step) and the directory
  it is written to: RUN_DIR/profile/, or profile/process_<i>/ with several processes (a host name
  alone can repeat on one machine). Shared by StepTrace and the twin's TorchStepTrace."""

  def __init__(self, workdir: str, steps: tuple[int, int] | None, process_index: int,
               process_count: int):
    self.steps = steps
    directory = os.path.join(workdir, PROFILE_DIR)
    if process_count > 1:
      directory = os.path.join(directory, f"process_{process_index}")
    self.directory = directory

  def traced(self, step: int) -> bool:
    return self.steps is not None and self.steps[0] <= step <= self.steps[1]

  def boundary(self, step: int) -> bool:
    """True for the step before the first traced one and for the last traced one: the loop must
    not queue the next step ahead of them (the trace starts before a dispatch and stops after a
    step is done; its own time is kept out of every step's)."""
    return self.steps is not None and step in (self.steps[0] - 1, self.steps[1])


class StepTrace(TraceWindow):
  """Starts jax.profiler before step `first` is dispatched and stops it once step `last` is done.
  Starting and writing the trace fall in no step's time (see boundary)."""

  def __init__(self, workdir: str, steps: tuple[int, int] | None):
    super().__init__(workdir, steps, jax.process_index(), jax.process_count())
    self.active = False

  def before_dispatch(self, step: int) -> None:
    """Call right before step `step` is dispatched."""
    if self.steps is not None and step == self.steps[0] and not self.active:
      os.makedirs(self.directory, exist_ok=True)
      jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
      self.active = True

  def after_step(self, step: int) -> None:
    """Call once step `step`'s outputs are on the host."""
    if self.active and step >= self.steps[1]:
      self.stop()

  def stop(self) -> None:
    if self.active:
      jax.profiler.stop_trace()
      self.active = False

  def describe(self, workdir: str) -> dict | None:
    """For run.json: the traced steps and the files written, relative to the run directory."""
    if self.steps is None:
      return None
    return trace_record(workdir, self.directory, self.steps, "jax.profiler",
                        "open the .xplane.pb with TensorBoard's profile plugin or xprof, "
                        "perfetto_trace.json.gz with ui.perfetto.dev")


def trace_record(workdir: str, directory: str, steps: tuple[int, int], tool: str,
                 how_to_open: str) -> dict:
  """run.json's `profile` (both frameworks): the traced steps, the tool, and the files written
  under `directory`, relative to the run directory."""
  files = []
  for root, _, names in os.walk(directory):
    files += [os.path.relpath(os.path.join(root, n), workdir) for n in names]
  return {"steps": list(steps), "tool": tool, "dir": os.path.relpath(directory, workdir),
          "files": sorted(files),
          "note": f"traced steps are left out of the timing summary (tracing slows them); "
                  f"{how_to_open}"}


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


# Events that are the runtime's own bookkeeping, not an op of the step.
_RUNTIME_EVENTS = ("ThreadpoolListener", "ThunkExecutor", "SlinkyThreadPool", "PjRt", "TfrtCpu")
_HLO_OP = re.compile(r"^\s*(?:ROOT )?%?([\w.-]+) = .*?metadata=\{[^}]*op_name=\"([^\"]+)\"")


def is_op_line(plane: str, line: str) -> bool:
  """Whether a trace line holds the step's ops: the CPU backend's worker threads (tf_XLA...), a
  TPU device plane's "XLA Ops" line, or a GPU device plane's streams (one line of kernels each)."""
  if plane.startswith("/device:"):
    return "op" in line.lower() or line.startswith("Stream")
  return line.startswith("tf_XLA")


def op_times(xplane_path: str) -> collections.Counter:
  """{op name (GPU: kernel name): total ns} over the op lines of a trace (is_op_line)."""
  from jax.profiler import ProfileData
  totals = collections.Counter()
  for plane in ProfileData.from_file(xplane_path).planes:
    for line in plane.lines:
      if not is_op_line(plane.name, line.name):
        continue
      for event in line.events:
        if not event.name.startswith(_RUNTIME_EVENTS):
          totals[event.name] += event.duration_ns
  return totals


def hlo_sources(hlo_text: str) -> dict[str, str]:
  """{HLO instruction name: the op_name metadata that says which model code it came from}."""
  found = {}
  for line in hlo_text.splitlines():
    match = _HLO_OP.match(line)
    if match:
      found[match[1]] = match[2]
  return found


# GEMM kernels of the GPU libraries (cuBLAS's nvjet and xmma/cutlass kernels): a custom call's
# kernel is named by its library, not after its HLO instruction.
_LIBRARY_GEMM = re.compile(r"nvjet|cublas|cutlass|xmma_gemm|^sm\d+_.*gemm", re.I)


def kernel_names(instructions) -> dict[str, str]:
  """{trace event name: HLO instruction}: each instruction under its own name (the events of CPU
  and TPU traces) and under its GPU kernel's (XLA names a fusion's kernel after it, '.' and '-'
  written '_': loop_convert_fusion_9 is loop_convert_fusion.9). Library kernels (cuBLAS, cuDNN)
  are named by their library and found under neither. Where XLA reuses one kernel for identical
  fusions, every launch bears the first one's name, so its time and model code cover them all."""
  found = {re.sub(r"[.\-]", "_", name): name for name in instructions}
  found.update({name: name for name in instructions})
  return found


def top_ops(workdir: str, top: int = 25) -> str:
  with open(os.path.join(workdir, "run.json")) as f:
    info = json.load(f)
  profile = info.get("profile")
  if not profile:
    raise FileNotFoundError(f"{workdir}/run.json names no trace: run with --config.profile_steps=START:END")
  if profile.get("tool") == "torch.profiler":  # the twin: torch.profiler's own table
    tables = [p for p in profile["files"] if p.endswith("top_ops.txt")]
    if not tables:
      raise FileNotFoundError(f"no top_ops.txt among {profile['files']}")
    with open(os.path.join(workdir, tables[0])) as f:
      return f.read().rstrip()
  traces = [os.path.join(workdir, p) for p in profile["files"] if p.endswith(".xplane.pb")]
  if not traces:
    raise FileNotFoundError(f"no .xplane.pb among {profile['files']}")
  totals = op_times(traces[0])
  sources, matmuls = {}, set()
  if info.get("hlo"):
    with open(os.path.join(workdir, info["hlo"]["optimized_hlo"])) as f:
      text = f.read()
    sources, matmuls = hlo_sources(text), hlo.matmul_ops(text)
    control_flow = hlo.control_flow_ops(text)
  else:
    control_flow = {name for name in totals
                    if re.fullmatch(r"(while|call|conditional)(\.\d+)?", name)}
  # A loop's (call's) own event spans ops that have events of their own: left out of the sums.
  for name in control_flow:
    totals.pop(name, None)
  if info.get("hlo"):  # GPU kernels are named after their fusions: find each one's instruction
    by_event = kernel_names(set(sources) | matmuls)
    instruction = {event: by_event.get(event) for event in totals}
    sources = {event: sources.get(i, "") for event, i in instruction.items() if i}
    matmuls = {event for event, i in instruction.items()
               if i in matmuls or (i is None and _LIBRARY_GEMM.search(event))}
  steps = profile["steps"][1] - profile["steps"][0] + 1
  all_ns = sum(totals.values()) or 1
  lines = [f"XLA ops of steps {profile['steps'][0]}-{profile['steps'][1]} by total time "
           f"(summed over threads: {all_ns / 1e9:.2f}s, {all_ns / 1e9 / steps:.2f}s per step; "
           f"loops' own events left out)"]
  matmul_ns = sum(ns for name, ns in totals.items() if name in matmuls)
  if matmul_ns:  # (on a GPU: the GEMM fusions' kernels and the libraries' GEMM kernels)
    lines.append(f"matmuls (dots and the fusions around them): {matmul_ns / 1e6 / steps:.1f} "
                 f"ms/step, {matmul_ns / all_ns:.1%}; everything else "
                 f"{(all_ns - matmul_ns) / 1e6 / steps:.1f} ms/step")
  lines.append(f"{'ms/step':>9} {'share':>6}  op  <- model code")
  for name, ns in totals.most_common(top):
    source = sources.get(name, "")
    lines.append(f"{ns / 1e6 / steps:9.1f} {ns / all_ns:6.1%}  {name}"
                 + (f"  <- {source}" if source else ""))
  if not info.get("hlo"):
    lines.append("(run with --config.dump_hlo=True too to see the model code of each op)")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  """`jaxbench profile RUN_DIR`; argv as sys.argv: the program name first (the convention of every
  jaxbench command)."""
  argv = list(sys.argv if argv is None else argv)
  parser = cli.FlagParser(prog="jaxbench profile",
                          description="The ops that took the most time in a run's trace.")
  parser.add_argument("workdir")
  parser.add_argument("--top", type=int, default=25)
  try:
    args = parser.parse_args(argv[1:])
    text = top_ops(args.workdir, args.top)
  except (BadInput, FileNotFoundError, KeyError) as e:
    return bad_input("jaxbench profile", e)
  print(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
