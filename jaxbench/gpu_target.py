"""The local NVIDIA GPU as a GpuTargetConfigProto: `jaxbench compile --describe_local[=PATH]`.

A description written on a machine with the GPU lets `jaxbench compile --target=PATH` build the
train step for that exact card anywhere else, with no GPU. The device facts come from the CUDA
driver (libcuda's cuDeviceGetAttribute, the calls XLA's own device description is made from:
https://docs.nvidia.com/cuda/cuda-driver-api/group__CUDA__DEVICE.html), so this needs the NVIDIA
driver but neither JAX's GPU backend nor any memory on the card.

XLA's descriptions also hold per-architecture tables (the scalar and matrix unit rates used by its
cost model) that the driver does not report. Where a shipped description (jaxbench/targets/) has
the same compute capability, its tables and layout are kept and every fact the driver reports is
replaced by the local value; otherwise the description holds the driver's facts alone.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import re

from jaxbench import compat
from jaxbench.errors import ConfigError

# CUdevice_attribute values (cuda.h; stable across CUDA 11-13).
ATTRIBUTES = {
    "max_threads_per_block": 1, "max_block_dim_x": 2, "max_block_dim_y": 3, "max_block_dim_z": 4,
    "max_grid_dim_x": 5, "max_grid_dim_y": 6, "max_grid_dim_z": 7,
    "max_shared_memory_per_block": 8, "warp_size": 10, "max_registers_per_block": 12,
    "clock_rate_khz": 13, "multiprocessor_count": 16, "ecc_enabled": 32,
    "memory_clock_rate_khz": 36, "global_memory_bus_width_bits": 37, "l2_cache_size": 38,
    "max_threads_per_multiprocessor": 39, "compute_capability_major": 75,
    "compute_capability_minor": 76, "max_shared_memory_per_multiprocessor": 81,
    "max_registers_per_multiprocessor": 82, "max_shared_memory_per_block_optin": 97,
}
REQUIRED = ("compute_capability_major", "compute_capability_minor", "multiprocessor_count",
            "total_memory")


@dataclasses.dataclass
class LocalGpu:
  """What the driver says about one device, and the software versions around it."""
  name: str
  attributes: dict  # ATTRIBUTES' keys (those the driver answered) plus total_memory
  driver_version: int | None = None  # cuDriverGetVersion: 1000 * major + 10 * minor
  runtime_version: int | None = None  # the CUDA runtime JAX's plugin loads, same encoding
  dnn_version: int | None = None  # cuDNN: 10000 * major + 100 * minor + patch
  unanswered: tuple[str, ...] = ()


def _cuda_version(v: int | None) -> str | None:
  return None if not v else f"{v // 1000}.{(v % 1000) // 10}.0"


def _dnn_parts(v: int | None) -> tuple[int, int, int] | None:
  return None if not v else (v // 10000, (v % 10000) // 100, v % 100)


def fpus_per_core(major: int, minor: int) -> int:
  """FP32 lanes per SM, as XLA counts them per architecture."""
  if major == 3:
    return 192  # Kepler
  if major in (6, 8):
    return 64 if minor == 0 else 128  # GP100 / A100: 64; GP10x / GA10x, AD10x: 128
  if major == 7:
    return 64  # Volta, Turing
  return 128  # Maxwell, Hopper, Blackwell


def query_driver(index: int = 0) -> LocalGpu:
  """The driver's facts about CUDA device `index`; ConfigError when there is no NVIDIA GPU."""
  try:
    cuda = ctypes.CDLL("libcuda.so.1")
  except OSError as e:
    raise ConfigError("--describe_local", f"no NVIDIA driver here ({e}); run it on the machine "
                                          "with the GPU, then pass the file to --target") from None

  def check(result, what):
    if result != 0:
      raise ConfigError("--describe_local", f"the CUDA driver failed {what} (CUresult {result})")

  check(cuda.cuInit(0), "to start (no GPU visible?)")
  count = ctypes.c_int()
  check(cuda.cuDeviceGetCount(ctypes.byref(count)), "to count devices")
  if not 0 <= index < count.value:
    raise ConfigError("--device_index", f"{index}: this machine has {count.value} CUDA device(s)")
  device = ctypes.c_int()
  check(cuda.cuDeviceGet(ctypes.byref(device), index), f"to open device {index}")
  name = ctypes.create_string_buffer(256)
  check(cuda.cuDeviceGetName(name, 256, device), "to name the device")
  attributes, unanswered = {}, []
  for key, code in ATTRIBUTES.items():
    value = ctypes.c_int()
    if cuda.cuDeviceGetAttribute(ctypes.byref(value), code, device) == 0:
      attributes[key] = value.value
    else:
      unanswered.append(key)
  total = ctypes.c_size_t()
  check(cuda.cuDeviceTotalMem_v2(ctypes.byref(total), device), "to report the memory size")
  attributes["total_memory"] = total.value
  driver = ctypes.c_int()
  driver_version = driver.value if cuda.cuDriverGetVersion(ctypes.byref(driver)) == 0 else None
  # The versions JAX's CUDA plugin loads; without the plugin the description leaves them out.
  runtime_version, dnn_version = compat.cuda_plugin_versions()
  return LocalGpu(name=name.value.decode(errors="replace"), attributes=attributes,
                  driver_version=driver_version, runtime_version=runtime_version,
                  dnn_version=dnn_version, unanswered=tuple(unanswered))


def device_facts(gpu: LocalGpu) -> dict:
  """The gpu_device_info fields the driver determines, computed as XLA computes them."""
  a = gpu.attributes
  missing = [k for k in REQUIRED if k not in a]
  if missing:
    raise ConfigError("--describe_local", f"the driver did not report {', '.join(missing)}")
  major, minor = a["compute_capability_major"], a["compute_capability_minor"]
  facts = {
      "threads_per_block_limit": a.get("max_threads_per_block"),
      "threads_per_warp": a.get("warp_size"),
      "shared_memory_per_block": a.get("max_shared_memory_per_block"),
      "shared_memory_per_core": a.get("max_shared_memory_per_multiprocessor"),
      "threads_per_core_limit": a.get("max_threads_per_multiprocessor"),
      "core_count": a["multiprocessor_count"],
      "fpus_per_core": fpus_per_core(major, minor),
      "block_dim_limit_x": a.get("max_grid_dim_x"),
      "block_dim_limit_y": a.get("max_grid_dim_y"),
      "block_dim_limit_z": a.get("max_grid_dim_z"),
      "l2_cache_size": a.get("l2_cache_size"),
      "device_memory_size": a["total_memory"],
      "shared_memory_per_block_optin": a.get("max_shared_memory_per_block_optin"),
      "registers_per_core_limit": a.get("max_registers_per_multiprocessor"),
      "registers_per_block_limit": a.get("max_registers_per_block"),
      "thread_dim_limit_x": a.get("max_block_dim_x"),
      "thread_dim_limit_y": a.get("max_block_dim_y"),
      "thread_dim_limit_z": a.get("max_block_dim_z"),
  }
  if "memory_clock_rate_khz" in a and "global_memory_bus_width_bits" in a:
    # Double data rate: two transfers per memory clock over the whole bus.
    facts["memory_bandwidth"] = 2 * a["memory_clock_rate_khz"] * 1000 * (
        a["global_memory_bus_width_bits"] // 8)
  if "clock_rate_khz" in a:
    facts["clock_rate_ghz"] = round(a["clock_rate_khz"] / 1e6, 6)
  return {k: v for k, v in facts.items() if v is not None}


def _template_for(major: int, minor: int) -> str | None:
  """A shipped description of the same compute capability, or None."""
  from jaxbench import compile as compile_lib
  for file in compile_lib.TARGETS.values():
    path = os.path.join(compile_lib.TARGETS_DIR, file)
    with open(path) as f:
      text = f.read()
    cc = re.search(r"cuda_compute_capability\s*{\s*major:\s*(\d+)(?:\s*minor:\s*(\d+))?", text)
    if cc and int(cc.group(1)) == major and int(cc.group(2) or 0) == minor:
      return text
  return None


def _set(text: str, field: str, value, quote: bool = False) -> str:
  """The `field: ...` line of gpu_device_info (two spaces in) or of the top level set to `value`;
  nested tables (the unit rates' own clocks) are left alone."""
  rendered = f'"{value}"' if quote else str(value).lower() if isinstance(value, bool) else str(value)
  return re.sub(rf"^((?:  )?{field}\s*:\s*).*$", lambda m: m.group(1) + rendered, text,
                flags=re.MULTILINE)


def describe(gpu: LocalGpu) -> str:
  """The GpuTargetConfigProto text of `gpu`."""
  facts = device_facts(gpu)
  major = gpu.attributes["compute_capability_major"]
  minor = gpu.attributes["compute_capability_minor"]
  dnn = _dnn_parts(gpu.dnn_version)
  strings = {"name": gpu.name, "device_description_str": gpu.name,
             "driver_version": _cuda_version(gpu.driver_version),
             "runtime_version": _cuda_version(gpu.runtime_version),
             "dnn_version": dnn and ".".join(map(str, dnn))}
  a = gpu.attributes
  model_str = (f"sm_{major}.{minor} with {a['total_memory']}B RAM, {a['multiprocessor_count']} cores"
               + (f", {a['clock_rate_khz']}KHz clock" if "clock_rate_khz" in a else "")
               + (f", {a['memory_clock_rate_khz']}KHz mem clock" if "memory_clock_rate_khz" in a
                  else "")
               + (f", {a['l2_cache_size']}B L2$" if "l2_cache_size" in a else ""))
  header = [f"# {gpu.name} (compute capability {major}.{minor}), written by "
            "`jaxbench compile --describe_local` from the CUDA driver's device attributes."]
  template = _template_for(major, minor)
  if template is not None:
    from jaxbench import compile as compile_lib
    body = "\n".join(line for line in template.splitlines() if not line.startswith("#"))
    # Facts of the template's card that the driver cannot confirm for this one.
    for field in ("pcie_bandwidth", "device_interconnect_info", "compile_time_toolkit_version",
                  "cub_version"):
      body = compile_lib.drop_field(body, field)
    for field, value in facts.items():
      body = _set(body, field, value)
    body = _set(body, "model_str", model_str, quote=True)
    if "ecc_enabled" in a:
      body = _set(body, "ecc_enabled", bool(a["ecc_enabled"]))
    for field, value in strings.items():
      body = _set(body, field, value, quote=True) if value else compile_lib.drop_field(body, field)
    if not dnn:  # the template's cuDNN is not this machine's
      body = compile_lib.drop_field(body, "dnn_version_info")
    else:
      body = re.sub(r"dnn_version_info\s*{[^}]*}",
                    f"dnn_version_info {{\n  major: {dnn[0]}\n  minor: {dnn[1]}\n  patch: {dnn[2]}\n}}",
                    body)
    if not re.search(r"^device_description_str\s*:", body, re.MULTILINE):
      body = body.rstrip() + f'\ndevice_description_str: "{gpu.name}"\n'
    header.append("# Layout and per-architecture unit tables: jaxbench/targets/ (OpenXLA, Apache "
                  "2.0); every value the driver reports is this card's own.")
    return "\n".join(header) + "\n" + body.strip() + "\n"
  lines = header + ["gpu_device_info {"]
  for field, value in facts.items():
    if not field.startswith("thread_dim_limit"):
      lines.append(f"  {field}: {value}")
  lines += ["  cuda_compute_capability {", f"    major: {major}", f"    minor: {minor}", "  }",
            "}", 'platform_name: "CUDA"']
  if dnn:
    lines += ["dnn_version_info {", f"  major: {dnn[0]}", f"  minor: {dnn[1]}",
              f"  patch: {dnn[2]}", "}"]
  lines.append(f'device_description_str: "{gpu.name}"')
  return "\n".join(lines) + "\n"


def default_path(gpu: LocalGpu) -> str:
  slug = re.sub(r"[^a-z0-9]+", "_", gpu.name.lower()).strip("_") or "local_gpu"
  return f"{slug}.txtpb"


def write_local(path: str | None, index: int = 0) -> tuple[str, LocalGpu]:
  """Write device `index`'s description to `path` (default: named after the card)."""
  gpu = query_driver(index)
  text = describe(gpu)
  path = path or default_path(gpu)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    f.write(text)
  return path, gpu
