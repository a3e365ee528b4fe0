"""jaxbench: one Flax LLM, trained by the same code on every XLA backend, timed honestly."""

import importlib.util
import os

__version__ = "0.1.0"


def plugin_installed(name: str) -> bool:
  """Whether the JAX PJRT plugin package jax_plugins.<name> is installed (without importing it)."""
  try:
    return importlib.util.find_spec(f"jax_plugins.{name}") is not None
  except ImportError:  # no jax_plugins namespace at all
    return False


def _gpu_plugins_without_gpus() -> str | None:
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


def _quiet_idle_rocm_plugin() -> None:
  """The ROCm plugin's initialize() raises "No AMD GPUs were found" on a machine without one (the
  `rocm-aot` extra on a laptop), whatever JAX_PLATFORMS says, and JAX logs it with its traceback at
  every start. That one record is dropped; any other plugin error is still logged."""
  import logging

  def keep(record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    return not (record.args and record.args[0] == "jax_plugins.xla_rocm7"
                and "No AMD GPUs were found" in str(error))

  logging.getLogger("jax._src.xla_bridge").addFilter(keep)


# Set before any JAX backend starts (importing jaxbench comes first in every jaxbench command);
# a user's own JAX_PLATFORMS always wins. Recorded in run.json with the rest of the JAX_ env.
_idle = _gpu_plugins_without_gpus()
if _idle and "rocm" in _idle.split(","):
  _quiet_idle_rocm_plugin()
if _idle and "JAX_PLATFORMS" not in os.environ:
  _tpu = importlib.util.find_spec("libtpu") is not None
  os.environ["JAX_PLATFORMS"] = "tpu,cpu" if _tpu else "cpu"
  os.environ["JAXBENCH_PLATFORMS_NOTE"] = (f"JAX_PLATFORMS set by jaxbench: the {_idle} plugin is "
                                           "installed but this machine has no such GPU")
