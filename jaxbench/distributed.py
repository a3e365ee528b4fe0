"""Multi-process runs on JAX's own multi-controller runtime (NCCL on CUDA, RCCL on ROCm, gloo on
CPU): jax.distributed.initialize from explicit flags, or from the cluster's environment (SLURM,
Open MPI), before anything touches a device. One process per host (or per GPU); every process runs
the same program on its share of the global batch, and only process 0 writes the run files."""

from __future__ import annotations

import os

import jax

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
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               initialization_timeout=timeout_s)
    return f"explicit: process {process_id} of {num_processes}, coordinator {coordinator_address}"
  if cluster_size_from_env() > 1:
    jax.distributed.initialize(initialization_timeout=timeout_s)  # JAX detects SLURM / Open MPI
    return f"auto-detected cluster: process {jax.process_index()} of {jax.process_count()}"
  return "single process"
