"""How a run ended: ok, oom, compile_error, timeout, bad_config, diverged or crash. The run itself
records the kind of its failure in summary.json (failure_kind, from the exception and the phase it
was in); a sweep reads it there (classify) and reads the process's output only where the process
wrote no summary of its own (killed, or failed before its run directory was its own). Pure
functions (tested on samples); out-of-memory is recognized as XLA, CUDA, ROCm, PyTorch and the
operating system report it."""

from __future__ import annotations

import re
import signal

from jaxbench.errors import ConfigError, Diverged

STATUSES = ("ok", "oom", "compile_error", "timeout", "bad_config", "diverged", "crash")
# summary.json's `phase`: how far a run got (in order), and `failure`: the kind of its failure.
PHASES = ("setup", "init", "compile", "train", "done")
FAILURES = ("bad_input", "oom", "compile_error", "diverged", "crash", "stopped")
# A failure recorded in summary.json -> the point's status, and the exit code that goes with it
# (a summary whose failure does not match the process's exit is an earlier start's).
FAILURE_STATUS = {"bad_input": ("bad_config", 2), "diverged": ("diverged", 3),
                  "oom": ("oom", 1), "compile_error": ("compile_error", 1), "crash": ("crash", 1)}
ERROR_TAIL_LINES = 15
# How much of a failed run's output is searched for the error's kind.
CLASSIFY_TAIL_LINES = 60

# Out of memory, as XLA (GPU, TPU, CPU), CUDA/ROCm, PyTorch and the OS say it.
OOM_PATTERNS = [re.compile(p) for p in (
    r"RESOURCE_EXHAUSTED",
    r"[Oo]ut of memory",
    r"OutOfMemoryError",  # torch.OutOfMemoryError, torch.cuda.OutOfMemoryError
    r"\bMemoryError\b",  # Python's own
    r"Cannot allocate memory",  # ENOMEM
    r"std::bad_alloc",
    r"hipErrorOutOfMemory|cudaErrorMemoryAllocation|CUDA_ERROR_OUT_OF_MEMORY",
    r"(CUBLAS|CUDNN)_STATUS_ALLOC_FAILED",
    r"[Ff]ailed to allocate",
    r"[Rr]esource exhausted",
    r"Allocator \(\w+\) ran out of memory",
)]
# Compilation failed (XLA, torch.compile / Inductor, ptxas), as opposed to a failure while running.
COMPILE_PATTERNS = [re.compile(p) for p in (
    r"BackendCompilerFailed",
    r"torch\._dynamo\.exc\.",
    r"torch\._inductor\.exc\.|InductorError",
    r"ptxas (fatal|error)",
    r"[Cc]ompilation failed|[Ff]ailed to compile",
)]
COMPILE_STARTED = "compiling the train step"
# `jaxbench train` exits 2 with this line when the compiled step cannot fit (train._check_fits).
DOES_NOT_FIT = re.compile(r"bad input: memory_check: (the [^;]*? needs [\d.]+ GiB)")
COMPILE_DONE = re.compile(r"^\s*compiled in ", re.M)


def failure_kind(e: BaseException, phase: str) -> str:
  """summary.json's `failure` for a run that ended with exception `e` in `phase` (PHASES)."""
  if isinstance(e, Diverged):
    return "diverged"
  if isinstance(e, ConfigError):
    return "bad_input"
  if isinstance(e, KeyboardInterrupt):
    return "stopped"
  text = f"{type(e).__name__}: {e}"
  if isinstance(e, MemoryError) or any(p.search(text) for p in OOM_PATTERNS):
    return "oom"
  if phase == "compile" or any(p.search(text) for p in COMPILE_PATTERNS):
    return "compile_error"
  return "crash"


def _from_summary(returncode: int, summary: dict | None) -> tuple[str, str] | None:
  """(status, reason) from the failure a process recorded in its summary.json, or None where it
  recorded none that goes with its exit code (an earlier start's summary, or one from before
  summaries named the failure)."""
  failure = (summary or {}).get("failure")
  if failure not in FAILURE_STATUS:
    return None
  status, code = FAILURE_STATUS[failure]
  if code != returncode and not (code == 1 and returncode > 3):
    return None
  error = (summary.get("error") or "").splitlines()
  detail = f": {error[0][:200]}" if error else ""
  return status, f"{failure} in the {summary.get('phase', 'unknown')} phase{detail}"


def classify(returncode: int | None, log: str, timed_out: bool = False,
             summary: dict | None = None) -> tuple[str, str]:
  """(status, reason) of a finished `jaxbench train` process from its exit code (negative: the
  signal), its summary.json (None when absent) and, where the process wrote no summary of its
  own, its output."""
  if timed_out:
    return "timeout", "stopped at its timeout"
  if returncode == 0:
    run_status = (summary or {}).get("status")
    if run_status == "finished":
      return "ok", "finished"
    return "crash", f"exit 0 but the run's status is {run_status or 'missing (no summary.json)'}"
  does_not_fit = DOES_NOT_FIT.search(log) if returncode == 2 else None
  if does_not_fit:  # `jaxbench train`'s memory check: an out-of-memory found before allocating,
    # the run directory left as it was (no summary.json), the one line saying so
    return "oom", f"does not fit ({does_not_fit.group(1)})"
  recorded = _from_summary(returncode, summary) if returncode is not None else None
  if recorded is not None:
    return recorded
  if returncode == 2:
    return "bad_config", "exit 2: bad input"
  if returncode == 3:
    return "diverged", "exit 3: non-finite loss"
  # The error is at the end; earlier lines may hold warnings that did not fail the run (XLA's
  # allocator says "ran out of memory ... not a failure" when it falls back).
  tail = "\n".join(log.splitlines()[-CLASSIFY_TAIL_LINES:])
  for pattern in OOM_PATTERNS:
    match = pattern.search(tail)
    if match:
      return "oom", f"out of memory ({match.group(0)})"
  if returncode == -signal.SIGKILL:
    # A SIGKILL the sweep did not send (its timeout ends with one) comes, short of a person or
    # a scheduler, from the kernel's out-of-memory killer.
    return "oom", "killed by SIGKILL (most likely the kernel's out-of-memory killer)"
  for pattern in COMPILE_PATTERNS:
    match = pattern.search(tail)
    if match:
      return "compile_error", f"compilation failed ({match.group(0)})"
  if COMPILE_STARTED in log and not COMPILE_DONE.search(log):
    return "compile_error", "failed while compiling the train step"
  if returncode is not None and returncode < 0:
    return "crash", f"killed by {signal.Signals(-returncode).name}"
  return "crash", f"exit {returncode}"


def error_tail(log: str, n: int = ERROR_TAIL_LINES) -> str:
  """The last n non-empty lines: what results.jsonl keeps of a failure."""
  lines = [line.rstrip() for line in log.splitlines() if line.strip()]
  return "\n".join(lines[-n:])
