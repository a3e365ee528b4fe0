"""The host's memory allocator (glibc malloc), set once per process before any backend starts.

XLA's CPU backend takes each step's temporaries as one block per execution (661 MiB for
configs/mpt.py:small). glibc serves a block that large with a fresh mmap and returns it with
munmap when the step ends, so every step faults its whole working memory in again, page by page,
zero-filled by the kernel: 160,000 page faults a step there. With `reuse` malloc never serves a
block with mmap (M_MMAP_MAX=0) and never gives the heap's top back (M_TRIM_THRESHOLD=-1), and JAX
runs single-device CPU steps on the calling thread (jax_cpu_enable_async_dispatch=False), so the
block comes from the main thread's heap and the next step reuses the same pages: no fault after
the first steps, the same peak resident memory, 1.09x the CPU step rate (benchmarks/RESULTS.md).
(A dispatch thread allocates from its own arena, where glibc maps blocks over 64 MiB afresh
whatever the settings; one arena for all threads, M_ARENA_MAX=1, also worked but doubled the
resident memory and slowed the compiler's threads.) This is an allocator setting, like the
tcmalloc / jemalloc preload PyTorch's and TensorFlow's CPU guides advise; the PyTorch twin runs
under the same malloc settings, and run.json records what was set.

`auto` applies it where the run computes on the CPU (for JAX: JAX_PLATFORMS starts with cpu;
otherwise: no GPU or TPU device node on the host): on an accelerator the host allocates little per
step. `system` leaves malloc and JAX's dispatch as the process started.
"""

from __future__ import annotations

import ctypes
import os
import sys

MODES = ("auto", "reuse", "system")

# glibc's <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
REUSE = (("M_MMAP_MAX", _M_MMAP_MAX, 0), ("M_TRIM_THRESHOLD", _M_TRIM_THRESHOLD, -1))

# Device nodes of the accelerators the frameworks drive: NVIDIA, AMD (ROCm's kernel driver), TPU.
ACCELERATOR_NODES = ("/dev/nvidiactl", "/dev/kfd", "/dev/accel0", "/dev/vfio/0")

_applied: dict | None = None


def accelerator_node(nodes=ACCELERATOR_NODES) -> str | None:
  """The first accelerator device node present on this host, or None."""
  return next((n for n in nodes if os.path.exists(n)), None)


def computes_on_cpu(framework: str, platforms: str, node: str | None) -> tuple[bool, str]:
  """Whether the run will compute on the CPU, with the reason: JAX_PLATFORMS decides for JAX
  where it is set; otherwise an accelerator's device node on the host means the framework uses
  it (both frameworks then, so a CPU comparison between them gets the same allocator)."""
  first = (platforms or "").split(",")[0].strip().lower()
  if framework == "jax" and first:
    return first == "cpu", f"JAX_PLATFORMS={platforms}"
  if node:
    return False, f"{node} exists (an accelerator on this host)"
  return True, "no accelerator device node on this host"


def _mallopt():
  if not sys.platform.startswith("linux"):
    return None
  try:
    return ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
    return None


def configure(mode: str, framework: str = "jax", platforms: str | None = None) -> dict:
  """Applies `mode` (one of MODES) once per process; returns what was done, for run.json. A
  second call returns the first call's record: the setting holds for the process."""
  global _applied
  if _applied is not None:
    return _applied
  if mode not in MODES:
    raise ValueError(f"host_allocator must be one of {MODES}, got {mode!r}")
  if platforms is None:
    platforms = os.environ.get("JAX_PLATFORMS", "")
  record = {"mode": mode, "applied": False}
  if mode == "auto":
    on_cpu, why = computes_on_cpu(framework, platforms, accelerator_node())
    record["reason"] = why
    if not on_cpu:
      _applied = {**record, "note": "left as the process started (accelerator run)"}
      return _applied
  if mode == "system":
    _applied = {**record, "note": "left as the process started"}
    return _applied
  mallopt = _mallopt()
  if mallopt is None:
    _applied = {**record, "note": "no glibc mallopt here: left as the process started"}
    return _applied
  done = {name: value for name, param, value in REUSE if mallopt(param, value) == 1}
  _applied = {**record, "applied": len(done) == len(REUSE), "set": done,
              "jax_cpu_async_dispatch": _sync_cpu_dispatch(),
              "note": "glibc malloc without mmap or trim; JAX CPU steps run on the calling thread "
                      "(step temporaries reused, not faulted in afresh)"}
  return _applied


def _sync_cpu_dispatch() -> bool | None:
  """Turns JAX's asynchronous CPU dispatch off (read when the CPU backend starts); returns the
  setting now, None where this JAX has no such option."""
  import jax
  try:
    jax.config.update("jax_cpu_enable_async_dispatch", False)
  except AttributeError:  # "Unrecognized config option"
    return None
  return False


def cpu_dispatch_async() -> bool:
  """Whether JAX dispatches CPU steps asynchronously in this process (False once `reuse` turned it
  off: a call then returns when the step is done, which the training loop's timing must know)."""
  return not (_applied is not None and _applied.get("jax_cpu_async_dispatch") is False)


def describe(mode: str) -> dict:
  """What configure() did in this process (run.json's `host_allocator`); when it was not called
  (a run started in-process, not by `jaxbench train`), says so."""
  if _applied is not None:
    return _applied
  return {"mode": mode, "applied": False,
          "note": "not configured: the run was started in-process, not by `jaxbench train`"}
