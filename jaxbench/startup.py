"""What a jaxbench program does once at its start, before any JAX backend starts: choose JAX's
platforms where a GPU plugin is installed without its GPU. A program's, not a library's: importing
jaxbench changes nothing in os.environ; the command line calls `configure` (cli.main, and
jaxbench/__init__.py for `python -m jaxbench...`), and so do benchmarks/common.py's scripts."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys

from jaxbench import plugin_installed

_quieted = False


def gpu_plugins_without_gpus() -> str | None:
  """Which installed GPU plugins have no GPU to drive on this machine (None if none).

  A GPU PJRT plugin installed on a machine without that GPU (the `cuda-aot` extra on a laptop, a
  shared image) makes every JAX start print a long "Unable to load cuDNN" traceback before it falls
  back to the CPU. The fallback is right; the noise is not, and it hides real errors."""
  def installed(*names):
    return any(plugin_installed(n) for n in names)

  idle = []
  if installed("xla_cuda13", "xla_cuda12") and not (
      os.path.exists("/proc/driver/nvidia/version") or os.path.exists("/dev/nvidiactl")
      or os.path.exists("/dev/nvidia0")):
    idle.append("cuda")
  if installed("xla_rocm7", "xla_rocm") and not os.path.exists("/dev/kfd"):
    idle.append("rocm")
  return ",".join(idle) or None


def platform_settings(environ, idle: str | None, tpu: bool) -> dict[str, str]:
  """The environment a run gets given the idle GPU plugins: JAX_PLATFORMS (the TPU and the CPU
  where libtpu is installed, else the CPU) with a note that says why, recorded in run.json with the
  rest of the JAX_ environment. Nothing where no plugin is idle; a user's own JAX_PLATFORMS wins."""
  if not idle or "JAX_PLATFORMS" in environ:
    return {}
  return {"JAX_PLATFORMS": "tpu,cpu" if tpu else "cpu",
          "JAXBENCH_PLATFORMS_NOTE": (f"JAX_PLATFORMS set by jaxbench: the {idle} plugin is "
                                      "installed but this machine has no such GPU")}


def _quiet_idle_rocm_plugin() -> None:
  """The ROCm plugin's initialize() raises "No AMD GPUs were found" on a machine without one (the
  `rocm-aot` extra on a laptop), whatever JAX_PLATFORMS says, and JAX logs it with its traceback at
  every start. That one record is dropped; any other plugin error is still logged."""
  global _quieted
  if _quieted:
    return

  def keep(record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not (record.args and record.args[0] == "jax_plugins.xla_rocm7"
                and "No AMD GPUs were found" in str(error))

  logging.getLogger("jax._src.xla_bridge").addFilter(keep)
  _quieted = True


def configure() -> dict[str, str]:
  """Sets what platform_settings gives (returned) in os.environ, before any backend starts. JAX
  reads JAX_PLATFORMS when it is imported: where a program imported it first, the setting goes
  to jax.config as well (it is read again when the first backend starts)."""
  idle = gpu_plugins_without_gpus()
  if idle and "rocm" in idle.split(","):
    _quiet_idle_rocm_plugin()
  settings = platform_settings(os.environ, idle, importlib.util.find_spec("libtpu") is not None)
  os.environ.update(settings)
  if settings and "jax" in sys.modules:
    sys.modules["jax"].config.update("jax_platforms", settings["JAX_PLATFORMS"])
  return settings
