"""Multi-process runs on JAX's own multi-controller runtime (NCCL on CUDA, RCCL on ROCm, gloo on
CPU): jax.distributed.initialize from explicit flags, or from the cluster's environment (SLURM,
Open MPI), before anything touches a device. One process per host (or per GPU); every process runs
the same program on its share of the global batch, and only process 0 writes the run files."""

from __future__ import annotations

import contextlib
import hashlib
import os

import jax

from jaxbench import compat
from jaxbench.errors import ConfigError


def cluster_size_from_env() -> int:
  """Processes the scheduler started for this job (1 outside SLURM / Open MPI)."""
  for key in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    value = os.environ.get(key, "")
    if value.isdigit():
      return int(value)
  return 1


def initialize(coordinator_address: str | None, num_processes: int | None,
               process_id: int | None, timeout_s: int = 300) -> str:
  """Initializes jax.distributed when this is a multi-process run; returns how it was set up."""
  explicit = (coordinator_address, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ConfigError("--coordinator_address", "with several processes give all three of "
                        "--coordinator_address=HOST:PORT, --num_processes and --process_id")
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ConfigError("--process_id", f"{process_id} must be in 0 .. {num_processes - 1}")
    if num_processes == 1:
      return "single process"
    # With explicit flags a process uses every device it can see. (Left to itself, JAX's SLURM
    # detection would also pin each process to the one GPU numbered SLURM_LOCALID, which is right
    # for one task per GPU but leaves 7 of 8 GPUs idle with one task per node.)
    with _without_cluster_env():
      _initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                  process_id=process_id, initialization_timeout=timeout_s)
    return (f"explicit: process {process_id} of {num_processes}, coordinator "
            f"{coordinator_address}{_without_a_hanging_cache()}")
  if cluster_size_from_env() > 1:
    if not any(k in os.environ for k in ("SLURM_PROCID", "OMPI_COMM_WORLD_RANK")):
      raise ConfigError("--coordinator_address", "the job has several tasks but this process is "
                        "not one of them (no SLURM_PROCID / OMPI_COMM_WORLD_RANK): start it with "
                        "srun or mpirun, or pass --coordinator_address, --num_processes, --process_id")
    # JAX detects SLURM / Open MPI: one process per GPU (each pinned to its local rank's GPU).
    _initialize(initialization_timeout=timeout_s)
    return (f"auto-detected cluster: process {jax.process_index()} of {jax.process_count()}"
            f"{_without_a_hanging_cache()}")
  return "single process"


def _initialize(**kwargs) -> None:
  try:
    jax.distributed.initialize(**kwargs)
  except ValueError as e:  # what JAX could not work out from the environment
    raise ConfigError("--coordinator_address", str(e).strip().splitlines()[0]) from None


def _without_a_hanging_cache() -> str:
  """Turns JAX's persistent compilation cache off where this release hangs with it in a run of
  several processes (compat.compilation_cache_hang), before anything compiles; what was done, for
  run.json's `distributed` ('' when nothing)."""
  if not (jax.config.jax_compilation_cache_dir and jax.config.jax_enable_compilation_cache):
    return ""
  reason = compat.compilation_cache_hang(jax.default_backend(), jax.process_count())
  if reason is None:
    return ""
  jax.config.update("jax_enable_compilation_cache", False)
  return f"; persistent compilation cache off: {reason}"


@contextlib.contextmanager
def _without_cluster_env():
  """Hides the scheduler's variables from JAX's cluster detection while it initializes."""
  hidden = {k: os.environ.pop(k) for k in list(os.environ)
            if k.startswith(("SLURM_", "OMPI_", "PMI_", "PMIX_"))}
  try:
    yield
  finally:
    os.environ.update(hidden)


def processes_on_this_host() -> int:
  """How many of the run's processes run on this machine (1 for a single-process run): on a CPU
  they share its cores, so no one process's measurement is one device's share
  (peak.resolve_peak). Machines are told apart by sysinfo.machine_identity."""
  if jax.process_count() == 1:
    return 1
  import numpy as np
  from jax.experimental import multihost_utils

  from jaxbench import sysinfo
  # 32 bits of the identity's hash: JAX without x64 would narrow a 64-bit integer.
  mine = np.frombuffer(hashlib.sha256(sysinfo.machine_identity().encode()).digest()[:4], np.int32)
  every = np.asarray(multihost_utils.process_allgather(mine)).reshape(-1)
  return int(np.sum(every == mine[0]))
