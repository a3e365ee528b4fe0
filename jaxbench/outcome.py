"""How a run ended, from its exit code, its output and its summary.json: ok, oom, compile_error,
timeout, bad_config, diverged or crash. Pure functions of text (tested on samples); out-of-memory
is recognized as XLA, CUDA, ROCm, PyTorch and the operating system report it."""

from __future__ import annotations

import re
import signal

STATUSES = ("ok", "oom", "compile_error", "timeout", "bad_config", "diverged", "crash")
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


def classify(returncode: int | None, log: str, timed_out: bool = False,
             summary: dict | None = None) -> tuple[str, str]:
  """(status, reason) of a finished `jaxbench train` process from its exit code (negative: the
  signal), its output and its summary.json (None when absent)."""
  if timed_out:
    return "timeout", "stopped at its timeout"
  if returncode == 0:
    run_status = (summary or {}).get("status")
    if run_status == "finished":
      return "ok", "finished"
    return "crash", f"exit 0 but the run's status is {run_status or 'missing (no summary.json)'}"
  if returncode == 2:
    does_not_fit = DOES_NOT_FIT.search(log)
    if does_not_fit:  # `jaxbench train`'s memory check: an out-of-memory found before allocating
      return "oom", f"does not fit ({does_not_fit.group(1)})"
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
