"""Every use of a private JAX API, or of one that changed between the JAX releases jaxbench
supports (setup.cfg: jax/jaxlib 0.10.2 to 0.12.x), in one place.

Each function says which releases need what, and was checked on jax/jaxlib 0.10.2 (Python 3.11,
CI's oldest environment), 0.11.2 (Python 3.12, the GPU machine's and a CPU check here), 0.12.0 and
0.12.1 (Python 3.13; the newest is CI's); tests/test_compat.py runs each on the installed release.
A private API that is gone answers "unknown" (False, None) rather than raising, or raises for its
caller to report as unavailable: what it feeds is a report or a precaution, never a run's result.

Public and unchanged over those releases, so used where they are needed, not through here:
jax.experimental.multihost_utils (broadcast_one_to_all, process_allgather),
jax.experimental.topologies.get_topology_desc and jax.export (tests/test_compat.py checks them).
"""

from __future__ import annotations

import shlex


def backends_started() -> bool:
  """Whether a JAX backend has started in this process, and so has already read JAX_PLATFORMS and
  XLA_FLAGS (setting them later changes nothing).

  jax 0.10.2-0.12.1: no public call says so without starting one; the private
  jax._src.xla_bridge._backends (a dict, empty until the first backend starts) does."""
  try:
    from jax._src import xla_bridge
  except ImportError:
    return False
  return bool(getattr(xla_bridge, "_backends", None))


def cuda_plugin_versions() -> tuple[int | None, int | None]:
  """(CUDA runtime, cuDNN) versions that JAX's CUDA plugin loads, as the CUDA API encodes them
  (1000 * major + 10 * minor; cuDNN 10000 * major + 100 * minor + patch); None without the plugin.

  jax 0.10.2-0.12.1: only the private jax._src.lib.cuda_versions (the plugin's _versions module,
  None when no CUDA plugin is installed) has them."""
  try:
    from jax._src.lib import cuda_versions
    if cuda_versions is None:
      return None, None
    return int(cuda_versions.cuda_runtime_get_version()), int(cuda_versions.cudnn_get_version())
  except Exception:  # no plugin, or one without these calls (or no library to load)
    return None, None


def hlo_module_cost_analysis(client, module) -> dict:
  """XLA's generic cost analysis (flops, bytes accessed, ...) of an HloModule, run by `client`.

  jax 0.10.2-0.12.1: jaxlib exports it only as the private
  jax._src.lib._jax.hlo_module_cost_analysis (a compile-only executable has no cost analysis of
  its own). Raises when it is gone; the caller reports it as unavailable."""
  from jax._src.lib import _jax
  return _jax.hlo_module_cost_analysis(client, module)


def jax_release() -> tuple[int, int, int]:
  """(major, minor, patch) of the installed jax: 0.12.0.1 -> (0, 12, 0)."""
  import jax
  parts = [int("".join(ch for ch in part if ch.isdigit()) or 0)
           for part in jax.__version__.split(".")[:3]]
  return tuple(parts + [0] * (3 - len(parts)))


def compilation_cache_hang(platform: str, process_count: int) -> str | None:
  """Why JAX's persistent compilation cache must stay off for this run; None where it may be used.

  jax 0.12.1 on the CPU with several processes (gloo's collectives): a step that process 0 loads
  from the cache waits forever in its first all-reduce, every process inside gloo::allreduce, where
  compiled afresh it runs (a data-parallel gradient step with a scan over layers does it outside
  jaxbench too). 0.10.2, 0.11.2 and 0.12.0 run it from the cache; later releases than 0.12.1 are
  taken to hang until one is seen not to (a cold cache costs a compile, a hang the run). Not seen
  on GPUs (their collectives are NCCL's or RCCL's), where none was run."""
  if platform != "cpu" or process_count < 2 or jax_release() < (0, 12, 1):
    return None
  return ("jax 0.12.1 hangs in the first collective of a multi-process CPU step loaded from it "
          "(jaxbench/compat.py)")


# The emitter whose dumps are the PTX of each kernel (XLA's DumpingEnabledForEmitter("ptx")).
PTX_EMITTER = "ptx"


def pallas_triton_attention():
  """(module, None) with Pallas's Triton flash attention (`mha` with its backward kernels,
  `BlockSizes`), or (None, why) where the installed JAX has none.

  jax 0.10.2-0.12.0: jax.experimental.pallas.ops.gpu.attention. jax 0.12.1 removed it (its
  pallas.ops.gpu keeps only Mosaic GPU kernels, for Hopper and newer NVIDIA GPUs), so
  `model.attention=pallas` needs jax 0.12.0 or older there."""
  try:
    from jax.experimental.pallas.ops.gpu import attention
  except ImportError:
    import jax
    return None, (f"jax {jax.__version__} has no Pallas Triton attention "
                  "(jax.experimental.pallas.ops.gpu.attention, removed in 0.12.1); it needs "
                  "jax 0.12.0 or older")
  return attention, None


def xla_flags_with_dump(xla_flags: str, directory: str) -> str:
  """`xla_flags` plus what makes XLA dump its per-module files and each kernel's PTX to `directory`.

  jax 0.10.2: --xla_dump_to alone dumps the PTX and LLVM IR of every kernel, and the same with
  --xla_dump_emitter_re=ptx. jax 0.11.2 and 0.12.1: --xla_dump_to alone dumps no PTX, only what
  the emitters matching --xla_dump_emitter_re write (`ptx`: the PTX, about 1 MB for mpt:nano;
  `.*` adds every Triton pass, 60 MB). A regex the user set is kept."""
  flags = [xla_flags.strip()] if xla_flags.strip() else []
  flags.append(f"--xla_dump_to={directory}")
  if not any(f.startswith("--xla_dump_emitter_re") for f in shlex.split(xla_flags)):
    flags.append(f"--xla_dump_emitter_re={PTX_EMITTER}")
  return " ".join(flags)
