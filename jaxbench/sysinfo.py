"""The exact software and hardware stack of a run, for run.json: what a reader needs to trust or
reproduce a number."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import resource
import socket
import subprocess
import sys

import jax

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "ml-collections",
            "absl-py", "jax-cuda12-plugin", "jax-cuda13-plugin", "jax-cuda12-pjrt",
            "jax-cuda13-pjrt", "jax-rocm7-plugin", "jax-rocm7-pjrt", "jax-rocm-plugin", "libtpu")
ENV_PREFIXES = ("JAXBENCH_", "XLA_", "JAX_", "MALLOC_", "TF_CPP_", "NCCL_", "RCCL_", "CUDA_",
                "NVIDIA_", "HIP_", "ROCR_", "HSA_", "ROCM_", "MIOPEN_", "LIBTPU_", "TPU_", "OMP_",
                "MKL_", "OPENBLAS_", "SLURM_JOB_", "SLURM_NNODES", "SLURM_NTASKS")


def versions() -> dict[str, str]:
  found = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return found


def relevant_env() -> dict[str, str]:
  return {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)}


def git_commit() -> dict[str, object]:
  """The commit of the jaxbench source tree (None outside a git checkout), and whether it is dirty."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                            text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    return {"commit": commit, "dirty": bool(dirty)}
  except (OSError, subprocess.SubprocessError):
    return {"commit": None, "dirty": None}


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine_identity() -> str:
  """What processes on one machine share and processes on others do not: the running kernel's
  boot id (containers on one machine share it, with host names of their own), else the host name."""
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      boot_id = f.read().strip()
    if boot_id:
      return boot_id
  except OSError:
    pass
  return socket.gethostname()


def host() -> dict[str, object]:
  return {"hostname": socket.gethostname(), "os": platform.platform(), "cpu": cpu_model(),
          "cpu_count": os.cpu_count(), "argv": sys.argv}


def backend(devices) -> dict[str, object]:
  d = devices[0]
  try:
    platform_version = d.client.platform_version
  except AttributeError:
    platform_version = None
  return {"backend": jax.default_backend(), "platform": d.platform,
          "platform_version": platform_version, "driver": driver(), "device_kind": d.device_kind,
          "n_devices": len(devices), "n_local_devices": jax.local_device_count(),
          "process_count": jax.process_count(), "process_index": jax.process_index()}


def driver() -> str | None:
  """The GPU kernel driver's version where Linux shows it (NVIDIA, AMD); None elsewhere."""
  for path in ("/proc/driver/nvidia/version", "/sys/module/amdgpu/version"):
    try:
      with open(path) as f:
        text = f.readline().strip()
    except OSError:
      continue
    if text:
      return f"{path}: {text}"
  return None


def now_iso() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _local_allocator_stats(devices, key: str) -> list[int]:
  """`key` of each local device's allocator statistics, where the backend reports it."""
  values = []
  for d in devices:
    if d.process_index != jax.process_index():
      continue
    try:
      stats = d.memory_stats()
    except Exception:  # backends without allocator stats raise or return None
      stats = None
    if stats and stats.get(key):
      values.append(int(stats[key]))
  return values


def memory_limit_per_device(devices) -> int | None:
  """The smallest allocator limit (bytes_limit) among the local devices; None where the backend
  reports none (the CPU)."""
  limits = _local_allocator_stats(devices, "bytes_limit")
  return min(limits) if limits else None


def host_memory_available() -> int | None:
  """Bytes this process can still take from the host: the kernel's MemAvailable, or less where a
  cgroup limit (a container, a SLURM job) leaves less; None off Linux."""
  available = None
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          available = int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                 ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                  "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
    try:
      with open(limit_file) as f:
        limit = f.read().strip()
      with open(usage_file) as f:
        usage = int(f.read().strip())
    except (OSError, ValueError):
      continue
    if limit.isdigit() and int(limit) < 1 << 60:  # "max" or a huge number: no limit
      left = max(0, int(limit) - usage)
      available = left if available is None else min(available, left)
    break
  return available


def peak_memory_per_device(devices) -> tuple[int | None, str]:
  """Peak bytes in use on the busiest local device, and where the figure comes from."""
  peaks = _local_allocator_stats(devices, "peak_bytes_in_use")
  if peaks:
    return max(peaks), "device allocator peak_bytes_in_use (max over local devices)"
  # CPU: no allocator stats; the process's peak resident memory is the honest upper bound.
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
  local = max(1, jax.local_device_count())
  if local == 1:
    return rss, "process peak RSS (the device's memory and everything else the process holds)"
  return rss // local, f"process peak RSS divided by {local} local devices (an estimate)"
