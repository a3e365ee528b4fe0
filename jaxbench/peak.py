"""Peak TFLOP/s of ONE logical JAX device, the denominator of MFU.

MFU figures are only as honest as this number, so the rules are:
  * always per *logical* device (what `jax.devices()` lists): an MI250X card shows up as two GCDs
    and a TPU v2/v3 chip as two cores, and each of those is one device;
  * dense peaks only (vendor figures marked "with sparsity" are halved);
  * when we do not know the peak, say so (tflops=None) with a reason that tells the user what to do.

Resolution order (`resolve_peak`): explicit override -> datasheet table -> cached measurement -> (CPU only)
measure now -> unknown. `python -m jaxbench.peak` (the `jaxbench peak` command) measures and fills the cache.

A CPU's measured peak moves with whatever else runs on it (one machine's cache said 0.186 TFLOP/s,
a fresh measurement 0.077, a quiet one 0.447), so a cached CPU figure stands for a run only when
it was measured on this machine, this CPU and this very set of cores, less than CPU_MAX_AGE_S ago,
with the machine quiet (QUIET_LOAD); otherwise the run measures its own. Every measurement records
those conditions, and run.json's `peak.conditions` shows them (compare warns when two runs' peaks
were measured under different ones).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import json
import math
import os
import platform as _platform
import re
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxbench import cli
from jaxbench.errors import BadInput, bad_input

DTYPES = ("bfloat16", "float32")

_WHAT_TO_DO = ("run `jaxbench peak` on this machine to measure and cache it, "
               "or pass --config.peak_tflops=<dense TFLOP/s of one device>")


@dataclasses.dataclass(frozen=True)
class Peak:
  tflops: float | None  # dense peak TFLOP/s of ONE logical device for this compute dtype; None = unknown
  source: str  # 'override' | 'table' | 'measured' | 'unknown'
  detail: str  # which table row / which cache entry + when measured / why unknown
  # A measured peak: where, when and under what load it was measured (measurement_conditions),
  # with `by_this_run` (measured by this process, or read from the cache) and `age_s`.
  conditions: dict | None = None


# --- Datasheet table ---------------------------------------------------------------------------------
#
# Row: (name, regex searched in device_kind (case-insensitive), bf16 TFLOP/s, f32 TFLOP/s, note).
# First match wins, so specific names come first: H100 PCIe/NVL before the H100 SXM default,
# MI250X before MI250, 'TPU v5 lite' before 'TPU v5'. "x*" = with sparsity.
#
# f32 on NVIDIA Ampere/Hopper: XLA runs default-precision f32 dots as TF32 on tensor cores, so the
# f32 peak is the dense TF32 peak. f32 on AMD: upstream XLA enables TF32/XF32 GEMMs on CUDA only
# (gpu_blas_lt.cc GetBlasComputationType: `cc.IsCuda() && tensor_float_32_execution_enabled()`), so
# ROCm f32 dots run at the FP32 *matrix* peak. Both assume the default precision: see
# _f32_precision_problem().
_GPU_TABLE = (
    # NVIDIA A100 datasheet (SXM4 and PCIe, 40 and 80 GB): BF16 312, TF32 156, dense.
    ("A100", r"\bA100\b", 312.0, 156.0, "NVIDIA A100 datasheet: BF16 312, TF32 156"),
    # NVIDIA H100 datasheet, PCIe column: BF16 1,513*, TF32 756*.
    ("H100 PCIe", r"\bH100\b.*\bPCIe\b", 756.0, 378.0,
     "NVIDIA H100 datasheet, PCIe: BF16 1,513* / 2, TF32 756* / 2"),
    # NVIDIA H100 datasheet, NVL column (per GPU): BF16 1,671*, TF32 835*.
    ("H100 NVL", r"\bH100\b.*\bNVL\b", 835.5, 417.5,
     "NVIDIA H100 datasheet, NVL: BF16 1,671* / 2, TF32 835* / 2"),
    # NVIDIA H100 whitepaper, SXM5: BF16 989.4, TF32 494.7, dense. Also the default for other H100
    # names, e.g. 'NVIDIA H100 80GB HBM3' (the SXM part).
    ("H100 SXM", r"\bH100\b", 989.4, 494.7, "NVIDIA H100 whitepaper, SXM5: BF16 989.4, TF32 494.7"),
    # NVIDIA H200 datasheet, NVL column: BF16 1,671*, TF32 835* (same as H100 NVL).
    ("H200 NVL", r"\bH200\b.*\bNVL\b", 835.5, 417.5,
     "NVIDIA H200 datasheet, NVL: BF16 1,671* / 2, TF32 835* / 2"),
    # NVIDIA H200 (SXM) and GH200 datasheets: BF16 1,979*, TF32 989*: the H100 SXM5 compute.
    ("H200/GH200", r"\bG?H200\b", 989.4, 494.7,
     "NVIDIA H200/GH200 datasheets (= H100 SXM5 compute): BF16 989.4, TF32 494.7"),
    # NVIDIA L40S datasheet: BF16 362.05 (733*), TF32 183 (366*).
    ("L40S", r"\bL40S\b", 362.05, 183.0, "NVIDIA L40S datasheet: BF16 362.05, TF32 183"),
    # ROCm names both MI250X and MI250 GCDs 'AMD Instinct MI250X/MI250': table_peak tells them
    # apart by the GCD's compute units (_MI250_BY_CUS) before it reads this table.
    # AMD Instinct MI250X datasheet: BF16 383.0, FP32 matrix 95.7 per card = 2 GCDs = 2 JAX devices.
    ("MI250X", r"MI250X", 191.5, 47.85,
     "AMD MI250X datasheet: BF16 383.0, FP32 matrix 95.7 per card / 2 GCDs"),
    # AMD Instinct MI250 datasheet: BF16 362.1, FP32 matrix 90.5 per card (2 GCDs).
    ("MI250", r"MI250\b", 181.05, 45.25,
     "AMD MI250 datasheet: BF16 362.1, FP32 matrix 90.5 per card / 2 GCDs"),
    # AMD Instinct MI210 datasheet (one GCD): BF16 181.0, FP32 matrix 45.3.
    ("MI210", r"MI210\b", 181.0, 45.3, "AMD MI210 datasheet: BF16 181.0, FP32 matrix 45.3"),
    # AMD Instinct MI300X and MI325X datasheets: BF16 1307.4, FP32 matrix 163.4, dense.
    ("MI300X", r"MI300X", 1307.4, 163.4, "AMD MI300X datasheet: BF16 1307.4, FP32 matrix 163.4"),
    ("MI325X", r"MI325X", 1307.4, 163.4, "AMD MI325X datasheet: BF16 1307.4, FP32 matrix 163.4"),
    # AMD Instinct MI300A datasheet: BF16 980.6, FP32 matrix 122.6, dense.
    ("MI300A", r"MI300A", 980.6, 122.6, "AMD MI300A datasheet: BF16 980.6, FP32 matrix 122.6"),
)

# Row: (name, regex matched against the whole device_kind, bf16 TFLOP/s, note); f32 is never tabulated.
# Source: Google Cloud TPU system-architecture docs, bf16 peak per chip. TPU v2/v3 show one JAX device
# per TensorCore (2 per chip); v4 and v5p run megacore (1 device per chip); v5e/v6e have 1 core.
_TPU_TABLE = (
    ("TPU v2", r"TPU v2", 22.5, "Google Cloud TPU v2: 45 bf16 TFLOP/s per chip / 2 cores"),
    ("TPU v3", r"TPU v3", 61.5, "Google Cloud TPU v3: 123 bf16 TFLOP/s per chip / 2 cores"),
    ("TPU v4", r"TPU v4", 275.0, "Google Cloud TPU v4: 275 bf16 TFLOP/s per chip (megacore)"),
    ("TPU v5e", r"TPU v5 ?(lite|e)", 197.0, "Google Cloud TPU v5e: 197 bf16 TFLOP/s per chip"),
    ("TPU v5p", r"TPU v5p?", 459.0, "Google Cloud TPU v5p: 459 bf16 TFLOP/s per chip (megacore)"),
    ("TPU v6e", r"TPU v6 ?(lite|e)", 918.0, "Google Cloud TPU v6e (Trillium): 918 bf16 TFLOP/s per chip"),
)
# Compute units per GCD (one JAX device): AMD's MI250X datasheet, 220 CUs per card of 2 GCDs; its
# MI250 datasheet, 208.
_MI250_BY_CUS = {110: "MI250X", 104: "MI250"}

_TPU_F32 = ("float32 matmul throughput on TPU depends on the matmul precision setting (the default "
            "runs f32 dots as bf16 passes), so there is no single datasheet figure")


def _f32_precision_problem(nvidia: bool) -> str | None:
  """Why the f32 table rows would not apply to this process, or None if they do."""
  prec = jax.config.jax_default_matmul_precision
  if prec not in (None, "default"):
    return (f"jax_default_matmul_precision={prec!r} changes how f32 dots run; the table assumes the default "
            "precision")
  if nvidia and os.environ.get("NVIDIA_TF32_OVERRIDE") == "0":
    return "NVIDIA_TF32_OVERRIDE=0 disables TF32, so f32 dots do not run at the TF32 peak the table assumes"
  return None


def table_peak(device_kind: str, platform: str, dtype: str, core_count: int | None = None) -> Peak:
  """Datasheet peak of one logical device, or Peak(None, 'unknown', reason). core_count: the
  device's compute units (SMs / CUs) where known, which tells an MI250X's GCD from an MI250's."""
  if dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
  kind = (device_kind or "").strip()
  if re.search(r"MI250X\s*/\s*MI250", kind, re.IGNORECASE):
    part = _MI250_BY_CUS.get(core_count)
    if part is None:
      return Peak(None, "unknown", f"{kind!r}: ROCm gives MI250X and MI250 GCDs this one name, and "
                  f"this device's compute units ({core_count or 'not reported'}; 110 on an MI250X, "
                  "104 on an MI250) do not tell them apart. MFU cannot be computed: set "
                  "--config.peak_tflops (per GCD: bf16 191.5 on an MI250X, 181.05 on an MI250)")
    peak = table_peak(f"AMD Instinct {part}", platform, dtype)
    return dataclasses.replace(peak, detail=f"{kind!r} with {core_count} compute units: {peak.detail}")
  platform = (platform or "").lower()
  if platform == "cpu":
    return Peak(None, "unknown", "CPU peaks are not tabulated; they are measured")
  if platform == "tpu" or kind.lower().startswith("tpu"):
    for name, pattern, bf16, note in _TPU_TABLE:
      if re.fullmatch(pattern, kind, re.IGNORECASE):
        if dtype == "float32":
          return Peak(None, "unknown", f"{name} ({kind!r}): {_TPU_F32}")
        return Peak(bf16, "table", f"{name} ({kind!r}), bf16: {note}")
    return Peak(None, "unknown", f"TPU kind {kind!r} is not in the peak table")
  for name, pattern, bf16, f32, note in _GPU_TABLE:
    if re.search(pattern, kind, re.IGNORECASE):
      if dtype == "bfloat16":
        return Peak(bf16, "table", f"{name} ({kind!r}), bf16: {note}")
      problem = _f32_precision_problem(nvidia=not name.startswith("MI"))
      if problem:
        return Peak(None, "unknown", f"{name} ({kind!r}), float32: {problem}")
      return Peak(f32, "table", f"{name} ({kind!r}), float32 at default matmul precision: {note}")
  return Peak(None, "unknown", f"device kind {kind!r} (platform {platform!r}) is not in the peak table")


# --- Measurement ---------------------------------------------------------------------------------------
def _default_size(platform: str) -> int:
  if platform == "cpu":
    # Big enough to be compute bound, small enough that 8 forced devices on 2 cores finish a call quickly.
    return 2048 if usable_cpus() >= 16 else 1024
  return 8192


def measure_peak(devices, dtype: str, *, size: int | None = None, seconds: float = 2.0) -> float:
  """Best measured matmul TFLOP/s per device, running one square matmul on every device at once.

  All devices run concurrently (a batched matmul sharded one-matrix-per-device), so devices that share a host
  (forced CPU devices, or GPUs behind one slow host) each get their honest share, not the whole host.
  """
  if dtype not in DTYPES:
    raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
  devices = list(devices)
  n = len(devices)
  size = size or _default_size(devices[0].platform)
  in_dtype = jnp.bfloat16 if dtype == "bfloat16" else jnp.float32
  mesh = jax.sharding.Mesh(np.array(devices), ("d",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))  # one matrix per device

  # Create the inputs on the devices (no host transfer of n*size^2 elements).
  def make(key):
    ka, kb = jax.random.split(key)
    shape = (n, size, size)
    return jax.random.normal(ka, shape, in_dtype), jax.random.normal(kb, shape, in_dtype)

  a, b = jax.jit(make, out_shardings=(sharding, sharding))(jax.random.key(0))
  # bf16 inputs with f32 accumulation/output, as the model's dots run; f32 at the default precision.
  matmul = jax.jit(lambda x, y: jnp.einsum("bij,bjk->bik", x, y, preferred_element_type=jnp.float32),
                   out_shardings=sharding)
  matmul(a, b).block_until_ready()  # compile
  matmul(a, b).block_until_ready()  # warm up

  flops_per_call = 2.0 * size**3  # per device
  repeats = 3
  best = 0.0
  for _ in range(repeats):
    # Keep at most 2 calls in flight: no idle gap between calls, bounded memory for the outputs.
    in_flight = collections.deque()
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds / repeats
    while calls == 0 or time.perf_counter() < deadline:
      in_flight.append(matmul(a, b))
      calls += 1
      if len(in_flight) > 2:
        in_flight.popleft().block_until_ready()
    for out in in_flight:
      out.block_until_ready()
    best = max(best, flops_per_call * calls / (time.perf_counter() - start))
  return best / 1e12


# --- Cache: {key: {tflops, measured_at, seconds, size}} in $JAXBENCH_CACHE_DIR/peaks.json ----------
def cache_path() -> str:
  cache_dir = (os.environ.get("JAXBENCH_CACHE_DIR")
               or os.path.join(os.path.expanduser("~"), ".cache", "jaxbench"))
  return os.path.join(cache_dir, "peaks.json")


def _cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return _platform.processor() or "unknown-cpu"


# Bumped when figures cached before may be wrong: 2, after processes of one run sharing a CPU had
# each cached a fraction of its peak under the single-process key (now never measured there).
CACHE_VERSION = 2


def usable_cpus() -> int:
  """The cores this process may run on (taskset / cgroup cpusets narrow them), not the host's."""
  try:
    return len(os.sched_getaffinity(0))
  except (AttributeError, OSError):  # not Linux
    return os.cpu_count() or 1


# A cached CPU figure older than this, or measured with the machine busier than this (the 1-minute
# load average per core the machine has), is not used: the run measures its own.
CPU_MAX_AGE_S = 3600.0
QUIET_LOAD = 0.3


def load_average() -> float | None:
  """The 1-minute load average (the whole machine's: a container sees its host's), or None."""
  try:
    return os.getloadavg()[0]
  except (AttributeError, OSError):
    return None


def _ranges(cores) -> str:
  """{0, 1, 2, 5} -> '0-2,5': the core set as taskset writes it."""
  cores, parts = sorted(cores), []
  for core in cores:
    if parts and core == parts[-1][1] + 1:
      parts[-1][1] = core
    else:
      parts.append([core, core])
  return ",".join(f"{a}-{b}" if b > a else f"{a}" for a, b in parts)


def measurement_conditions(devices) -> dict:
  """What a measurement made now depends on besides the hardware's kind: the machine (the
  kernel's boot id: a reboot or another machine is another measurement), the CPU model, the cores
  this process may use, XLA_FLAGS (they change the matmul XLA emits), and how busy the machine is
  (its load average before measuring, per core of the machine)."""
  from jaxbench import sysinfo
  try:
    cores = _ranges(os.sched_getaffinity(0))
  except (AttributeError, OSError):
    cores = f"{os.cpu_count() or 1} (affinity unknown)"
  load, host_cpus = load_average(), os.cpu_count() or 1
  return {"measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "machine": sysinfo.machine_identity(), "cpu": _cpu_model(), "cores": cores,
          "load_avg_1m": None if load is None else round(load, 2), "host_cpus": host_cpus,
          "load_per_core": None if load is None else round(load / host_cpus, 3),
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "platform": list(devices)[0].platform}


def _age_s(measured_at) -> float | None:
  try:
    then = datetime.datetime.fromisoformat(str(measured_at))
  except ValueError:
    return None
  if then.tzinfo is None:
    then = then.replace(tzinfo=datetime.timezone.utc)
  return (datetime.datetime.now(datetime.timezone.utc) - then).total_seconds()


def stale_because(cached: dict | None, now: dict) -> str | None:
  """Why a cached CPU measurement (its conditions) does not stand for a run under `now`'s
  (measurement_conditions), or None when it does: measured on this machine, CPU and core set,
  recently, with the machine quiet."""
  if not isinstance(cached, dict) or not cached:
    return "it does not record where and under what load it was measured"
  for key, what in (("machine", "on another machine (boot id)"), ("cpu", "on another CPU"),
                    ("cores", "on another set of cores"), ("xla_flags", "with other XLA_FLAGS")):
    if cached.get(key, "") != now.get(key, ""):
      return f"it was measured {what}: {cached.get(key)} vs {now.get(key)} here"
  age = _age_s(cached.get("measured_at"))
  if age is None or age > CPU_MAX_AGE_S or age < -60:
    when = "at an unknown time" if age is None else f"{age / 3600:.1f} h ago"
    return f"it was measured {when} (used up to {CPU_MAX_AGE_S / 3600:g} h)"
  load = cached.get("load_per_core")
  if not isinstance(load, (int, float)) or load > QUIET_LOAD:
    return (f"it was measured under load (load average {cached.get('load_avg_1m')} on "
            f"{cached.get('host_cpus')} cores; used only at <= {QUIET_LOAD} per core)")
  return None


def _cache_key(devices, dtype: str) -> str:
  """Everything that changes the measured number: hardware, how many devices share it, dtype, jax version."""
  devices = list(devices)
  d = devices[0]
  parts = [d.platform, d.device_kind, f"n={len(devices)}", dtype, f"jax={jax.__version__}",
           f"v{CACHE_VERSION}"]
  if d.platform == "cpu":  # 'cpu' says nothing about the host, so name the host CPU and its core count.
    parts += [_cpu_model(), f"cpus={usable_cpus()}"]
  return "|".join(parts)


def _read_cache() -> dict:
  """The cache contents; a missing, unreadable or corrupt file reads as empty."""
  try:
    with open(cache_path()) as f:
      data = json.load(f)
  except (OSError, ValueError):
    return {}
  return data if isinstance(data, dict) else {}


def _write_cache(data: dict) -> str:
  """Atomic replace, so a crash or a concurrent reader never sees a half-written file."""
  path = cache_path()
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".peaks.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(data, f, indent=1, sort_keys=True)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise
  return path


def cached_entry(devices, dtype) -> tuple[Peak | None, str | None]:
  """The cached measurement for these devices and dtype, or (None, why not): absent, malformed,
  or on a CPU, stale (stale_because)."""
  devices = list(devices)
  key = _cache_key(devices, dtype)
  entry = _read_cache().get(key)
  try:
    tflops = float(entry["tflops"])
  except (TypeError, KeyError, ValueError):
    return None, None  # absent or malformed entry
  if not (math.isfinite(tflops) and tflops > 0):
    return None, None
  conditions = entry.get("conditions")
  if devices[0].platform == "cpu":
    why = stale_because(conditions, measurement_conditions(devices))
    if why:
      return None, f"the cached figure {tflops:.4g} TFLOP/s was not used: {why}"
  conditions = dict(conditions or {}, by_this_run=False,
                    age_s=_age_s((conditions or {}).get("measured_at", entry.get("measured_at"))))
  return Peak(tflops, "measured",
              f"cached measurement [{key}] in {cache_path()}, measured {entry.get('measured_at', '?')} "
              f"(matmul size {entry.get('size', '?')}, {entry.get('seconds', '?')} s)", conditions), None


def cached_peak(devices, dtype) -> Peak | None:
  return cached_entry(devices, dtype)[0]


def measure_and_cache(devices, dtype, **kw) -> Peak:
  devices = list(devices)
  size = kw.pop("size", None) or _default_size(devices[0].platform)
  seconds = kw.pop("seconds", 2.0)
  why_not_cached = kw.pop("why_not_cached", None)
  if kw:
    raise TypeError(f"unexpected arguments {sorted(kw)}")
  conditions = measurement_conditions(devices)  # the load before this measurement adds its own
  tflops = measure_peak(devices, dtype, size=size, seconds=seconds)
  key = _cache_key(devices, dtype)
  data = _read_cache()
  data[key] = {"tflops": tflops, "measured_at": conditions["measured_at"], "seconds": seconds,
               "size": size, "conditions": conditions}
  path = _write_cache(data)
  detail = f"measured now [{key}] (matmul size {size}, {seconds} s), cached in {path}"
  if why_not_cached:
    detail += f"; {why_not_cached}"
  return Peak(tflops, "measured", detail, dict(conditions, by_this_run=True, age_s=0.0))


def resolve_peak(devices, dtype: str, override_tflops: float = 0.0, *,
                 measure_if_missing_on_cpu: bool = True, host_processes: int = 1) -> Peak:
  """override (>0) -> table -> cache -> (CPU only, if allowed) measure -> unknown with what to do.

  host_processes: the run's processes on this host. Where several share a CPU, a measured or
  cached figure (one process using every core) is not one device's share, and all of them
  measuring at once would cache a fraction of the host's peak under the key a single process reads
  (its MFU then 2x too high on two processes' figure): the peak is unknown unless overridden."""
  devices = list(devices)
  if override_tflops:
    if not (math.isfinite(override_tflops) and override_tflops > 0):
      raise ValueError(f"peak_tflops override must be a positive finite number, got {override_tflops!r}")
    return Peak(float(override_tflops), "override", f"--config.peak_tflops={override_tflops}")
  d = devices[0]
  table = table_peak(d.device_kind, d.platform, dtype, getattr(d, "core_count", None))
  if table.tflops is not None:
    return table
  if d.platform == "cpu" and host_processes > 1:
    return Peak(None, "unknown", f"{host_processes} processes of this run share this host's CPU: a "
                "peak measured by one process is not one device's share, and measuring in all of "
                "them at once would cache a fraction of it; MFU cannot be computed: set "
                "--config.peak_tflops to the per-device share to have it")
  cached, why_not = cached_entry(devices, dtype)
  if cached is not None:
    return cached
  if d.platform == "cpu" and measure_if_missing_on_cpu:
    return measure_and_cache(devices, dtype, why_not_cached=why_not)
  return Peak(None, "unknown", f"{table.detail}; no usable cached measurement for "
              f"[{_cache_key(devices, dtype)}]{f' ({why_not})' if why_not else ''}. "
              f"MFU cannot be computed: {_WHAT_TO_DO}")


# --- `jaxbench peak` ----------------------------------------------------------------------------------
def main(argv=None) -> int:
  """argv as sys.argv: the program name first (the convention of every jaxbench command)."""
  parser = cli.FlagParser(
      prog="jaxbench peak", description="Measure the matmul peak TFLOP/s per device, cached for MFU.")
  parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated: bfloat16,float32")
  parser.add_argument("--seconds", type=float, default=2.0, help="timing budget per dtype")
  parser.add_argument("--size", type=int, default=None, help="square matmul size (default: per platform)")
  parser.add_argument("--json", action="store_true", help="print a JSON object instead of a table")
  parser.add_argument("--no_cache", action="store_true", help="measure only; do not write the cache")
  try:
    args = parser.parse_args((sys.argv if argv is None else argv)[1:])
    if args.seconds <= 0 or (args.size is not None and args.size <= 0):
      raise BadInput("--seconds and --size must be positive")
    dtypes = [t.strip() for t in args.dtypes.split(",") if t.strip()]
    for t in dtypes:
      if t not in DTYPES:
        raise BadInput(f"unknown dtype {t!r}; choose from {','.join(DTYPES)}")
  except BadInput as e:
    return bad_input("jaxbench peak", e)

  devices = jax.local_devices()
  d = devices[0]
  size = args.size or _default_size(d.platform)
  results = []
  for dtype in dtypes:
    if args.no_cache:
      conditions = measurement_conditions(devices)
      measured, cache_file = measure_peak(devices, dtype, size=size, seconds=args.seconds), None
    else:
      peak = measure_and_cache(devices, dtype, size=size, seconds=args.seconds)
      measured, conditions, cache_file = peak.tflops, peak.conditions, cache_path()
    table = table_peak(d.device_kind, d.platform, dtype, getattr(d, "core_count", None))
    results.append({
        "dtype": dtype, "device_kind": d.device_kind, "platform": d.platform, "n_devices": len(devices),
        "measured_tflops_per_device": measured, "table_tflops": table.tflops, "table_detail": table.detail,
        # A measured fraction far from ~0.6-0.9 of the datasheet suggests a wrong table row or a sick device.
        "measured_over_table": measured / table.tflops if table.tflops else None,
        "size": size, "seconds": args.seconds, "cache_file": cache_file, "conditions": conditions})

  if args.json:
    print(json.dumps({"jax_version": jax.__version__, "results": results}, indent=1))
    return 0
  print(f"device kind: {d.device_kind!r}  platform: {d.platform}  devices measured: {len(devices)}  "
        f"matmul size: {size}  jax {jax.__version__}")
  for r in results:
    table = f"{r['table_tflops']:.1f}" if r["table_tflops"] else "n/a"
    frac = f" ({r['measured_over_table']:.0%} of table)" if r["measured_over_table"] else ""
    print(f"  {r['dtype']:>8}: measured {r['measured_tflops_per_device']:.3f} TFLOP/s per device{frac}; "
          f"table peak {table} ({r['table_detail']})")
  print(f"cache: {cache_path() if not args.no_cache else 'not written (--no_cache)'}")
  load = results[0]["conditions"].get("load_per_core") if results else None
  if d.platform == "cpu" and results:
    quiet = isinstance(load, (int, float)) and load <= QUIET_LOAD
    print(f"measured with a load average of {results[0]['conditions'].get('load_avg_1m')} on "
          f"{results[0]['conditions'].get('host_cpus')} cores: "
          + (f"runs on these cores read it for {CPU_MAX_AGE_S / 3600:g} h" if quiet else
             f"busier than {QUIET_LOAD} per core, so runs measure their own instead"))
  return 0


if __name__ == "__main__":
  sys.exit(main())
