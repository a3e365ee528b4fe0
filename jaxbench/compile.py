"""`jaxbench compile`: the full train step compiled for a GPU that is not here.

  jaxbench compile [--config=...] [--config.KEY=VALUE ...] [--topology=PxHxD] [--dump=DIR]
                   --target=h100|a100|a100-40|mi300x|mi250x|mi250|PATH.txtpb[,...] [--json]
                   [--report=PATH] [--suggest=False]
  jaxbench compile --describe_local[=PATH] [--device_index=0]

XLA compiles for a described GPU (a `GpuTargetConfigProto`, see jaxbench/targets/) with no GPU
attached: the same jitted step `jaxbench train` runs (forward, backward, AdamW, accumulation, the
configured mesh) goes through the GPU compiler, Triton and ptxas (or, for AMD, LLVM's AMDGPU
backend and lld), and the report answers the first questions of a study before anyone rents the
hardware:

- does it compile, and how long does that take;
- per-device memory (arguments, outputs, temporaries, code, from XLA's buffer assignment) against
  the device's memory and the pool JAX's allocator takes from it: fits, or short by how much, and
  whether it also leaves room for the next step's temporaries (TIGHT when not: on an H200 such
  steps ran once and ran out of memory at the second; see memory_report);
- the collectives the mesh implies (kind, count, bytes), after SPMD partitioning;
- the kernels it chose (Triton GEMM fusions, cuBLAS, cuDNN attention, other custom calls);
- a roofline lower bound on the step time on that GPU: FLOPs over its peak, bytes over its
  bandwidth, which binds, and the MFU that bound allows;
- when it does not fit, the cheapest change that does (microbatches, remat, FSDP), found by
  compiling a few (find_fit; --suggest=False skips the search).

The topology is PARTITIONS x HOSTS-PER-PARTITION x DEVICES-PER-HOST (XLA's GPU topology string);
its device count must equal the mesh's (default: one host with as many devices as the mesh needs,
or one device). NVIDIA targets need the `cuda-aot` extra (the CUDA PJRT plugin, ptxas, libdevice,
cuDNN); AMD targets the `rocm-aot` extra (the ROCm PJRT plugin) and a C compiler: the plugin runs
in a child process, with link-only stand-ins for the ROCm libraries where ROCm is not installed,
and its code objects are checked to be for the requested gfx architecture (jaxbench/rocm_aot.py).
Nothing runs on any device.

Exit codes, one per verdict, so that a script can act on them: 0 FITS (or the description gives no
memory size, so there is no verdict), 4 TIGHT (fits once, not beside the next step's temporaries),
5 DOES NOT FIT, 1 the compiler rejected the step, 2 bad input (nothing compiled). With several
targets, the worst verdict of any: did not compile, then DOES NOT FIT, then TIGHT, then FITS.

`--describe_local` runs on a machine with an NVIDIA GPU instead: it writes that card's own
description (from the CUDA driver; see jaxbench/gpu_target.py) to PATH (default: named after the
card) for `--target=PATH` on machines without it, and compiles nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import sys
import tempfile
import time

from jaxbench import cli
from jaxbench import compat
from jaxbench import plugin_installed
from jaxbench import rundir
from jaxbench.errors import ConfigError

TARGETS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "targets")
TARGETS = {"h100": "h100_sxm.txtpb", "a100": "a100_sxm_80.txtpb", "a100-80": "a100_sxm_80.txtpb",
           "a100-40": "a100_sxm_40.txtpb", "mi300x": "mi300.txtpb", "mi250x": "mi250x.txtpb",
           "mi250": "mi250.txtpb"}
AOT_EXTRA = ("the `cuda-aot` extra: pip install -e \".[cuda-aot]\" (the CUDA PJRT plugin matching "
             "jax, plus nvidia-cuda-nvcc and nvidia-nvvm for ptxas and libdevice, and cuDNN for the "
             "fused attention)")
# Measured step times over the compute bound (FLOPs over the datasheet's dense bf16 peak), mpt
# 125m-1b on an H200: benchmarks/RESULTS.md, "Deviceless against the device".
MEASURED_OVER_BOUND = (2.3, 3.3)
# JAX's GPU allocator takes this fraction of device memory up front, unless told otherwise
# (https://docs.jax.dev/en/latest/gpu_memory_allocation.html).
DEFAULT_MEM_FRACTION = 0.75
GIB = 2**30


# --- target descriptions -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Target:
  name: str
  path: str
  text: str  # the description as XLA will parse it (unknown fields dropped)
  platform: str  # "cuda" or "rocm"
  device_name: str
  memory_bytes: int | None
  bandwidth_bytes_per_s: float | None
  dropped_fields: tuple[str, ...] = ()
  arch: str = ""  # what the compiler builds for: sm_90a, gfx942, ...


def _field(text: str, name: str) -> str | None:
  match = re.search(rf"^\s*{name}\s*:\s*(.+?)\s*$", text, re.MULTILINE)
  return match.group(1).strip('"') if match else None


def drop_field(text: str, name: str) -> str:
  """The description without any `name: value` line or `name { ... }` block."""
  out, depth = [], 0
  for line in text.splitlines():
    stripped = line.strip()
    if depth:
      depth += stripped.count("{") - stripped.count("}")
      continue
    if re.match(rf"{re.escape(name)}\s*{{", stripped):
      depth = stripped.count("{") - stripped.count("}")
      continue
    if re.match(rf"{re.escape(name)}\s*:", stripped):
      continue
    out.append(line)
  return "\n".join(out) + "\n"


def resolve_target_path(target: str) -> tuple[str, str]:
  """(name, path) of a shipped target name or a .txtpb file; ConfigError otherwise."""
  key = target.lower()
  if key in TARGETS:
    return key, os.path.join(TARGETS_DIR, TARGETS[key])
  if os.path.isfile(target):
    return os.path.splitext(os.path.basename(target))[0], target
  raise ConfigError("--target", f"{target!r} is neither a shipped target ({', '.join(TARGETS)}) "
                                "nor a GpuTargetConfigProto text file")


def description_problem(text: str) -> str | None:
  """What a description lacks that XLA needs (it crashes on some: no compute units divides by
  zero), or None. Syntax is left to XLA's own parser, which names the line."""
  if not re.search(r"^\s*gpu_device_info\s*{", text, re.MULTILINE):
    return "not a GpuTargetConfigProto: no gpu_device_info { ... } block"
  cores = _field(text, "core_count")
  if cores is None or (cores.isdigit() and int(cores) == 0):
    return "gpu_device_info needs core_count (the SMs or compute units), > 0"
  if not re.search(r"(cuda|rocm)_compute_capability\s*{", text):
    return ("gpu_device_info needs cuda_compute_capability { ... } or "
            "rocm_compute_capability { ... }")
  return None


def _numbers(text: str, path: str, *names: str) -> list[float | None]:
  out = []
  for name in names:
    value = _field(text, name)
    try:
      out.append(None if value is None else float(value))
    except ValueError:
      raise ConfigError("--target", f"{path}: {name}: expected a number, got {value!r}") from None
  return out


def read_target(target: str) -> Target:
  name, path = resolve_target_path(target)
  with open(path) as f:
    text = f.read()
  problem = description_problem(text)
  if problem:
    raise ConfigError("--target", f"{path}: {problem}")
  rocm = re.search(r"rocm_compute_capability\s*{", text) is not None
  platform = (_field(text, "platform_name") or ("ROCM" if rocm else "CUDA")).lower()
  platform = "rocm" if platform in ("rocm", "rocm_gpu") else "cuda"
  if rocm != (platform == "rocm"):
    raise ConfigError("--target", f"{path}: platform_name {platform.upper()} does not go with its "
                                  f"{'rocm' if rocm else 'cuda'}_compute_capability")
  memory, bandwidth = _numbers(text, path, "device_memory_size", "memory_bandwidth")
  device_name = (_field(text, "device_description_str") or _field(text, "name") or name)
  return Target(name=name, path=path, text=text, platform=platform, device_name=device_name,
                memory_bytes=int(memory) if memory else None, bandwidth_bytes_per_s=bandwidth,
                arch=_arch(text))


def _arch(text: str) -> str:
  """sm_90a / sm_80 from a CUDA description's compute capability, gfx942 from a ROCm one's."""
  rocm = re.search(r'gcn_arch_name\s*:\s*"([^":]*)', text)
  if rocm:
    return rocm.group(1)
  cc = re.search(r"cuda_compute_capability\s*{([^}]*)}", text)
  if not cc:
    return "?"
  major = re.search(r"major\s*:\s*(\d+)", cc.group(1))
  minor = re.search(r"minor\s*:\s*(\d+)", cc.group(1))
  accelerated = "ACCELERATED" in cc.group(1)
  return f"sm_{major.group(1) if major else '?'}{minor.group(1) if minor else 0}" + (
      "a" if accelerated else "")


@contextlib.contextmanager
def _captured_stderr():
  """What C++ code writes to fd 2 meanwhile (XLA logs why a description did not parse there)."""
  captured = {"text": ""}
  with tempfile.TemporaryFile(mode="w+b") as tmp:
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(tmp.fileno(), 2)
    try:
      yield captured
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      tmp.seek(0)
      captured["text"] = tmp.read().decode(errors="replace")


_UNKNOWN_FIELD = re.compile(r'has no field named "(\w+)"')


def topology(target: Target, topology_name: str, warn) -> tuple[object, Target]:
  """The compile-only devices of `topology_name` on `target`, dropping (with a warning) fields of
  the description that this XLA does not know."""
  from jax.experimental import topologies
  dropped = list(target.dropped_fields)
  text = target.text
  for _ in range(50):  # one field per try; a description has far fewer unknown fields
    with _captured_stderr() as log:
      try:
        topo = topologies.get_topology_desc(platform=target.platform, target_config=text,
                                            topology=topology_name)
        error = None
      except Exception as e:  # the reason is in XLA's log, captured above
        error = e
    if error is None:
      if log["text"].strip() and not dropped:
        sys.stderr.write(log["text"])
      return topo, dataclasses.replace(target, text=text, dropped_fields=tuple(dropped))
    unknown = _UNKNOWN_FIELD.search(log["text"])
    if unknown and unknown.group(1) not in dropped:
      dropped.append(unknown.group(1))
      warn(f"warning: {os.path.basename(target.path)}: this XLA does not know the field "
           f"{unknown.group(1)!r}; dropped it")
      text = drop_field(text, unknown.group(1))
      continue
    message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if "topology not implemented" in message:
      import jax
      raise ConfigError("--target", f"{target.path}: the {target.platform.upper()} PJRT plugin is "
                        "installed but did not start in this process (JAX's platforms: "
                        f"{jax.config.jax_platforms or 'not set'}). On a machine without the GPU "
                        "its start-up checks fail unless JAX_PLATFORMS=cpu is set before JAX "
                        "starts (jaxbench sets it when it is imported first): import jaxbench "
                        "before JAX runs anything, or set JAX_PLATFORMS=cpu")
    if "topology must be of shape" in message:
      raise ConfigError("--topology", f"{topology_name!r}: expected PARTITIONSxHOSTSxDEVICES, "
                                      "e.g. 1x1x8 or 1x2x4")
    detail = log["text"].strip().splitlines()[-1] if log["text"].strip() else message
    detail = re.sub(r"^[EWIF]\d{4} [\d:.]+\s+\d+ \S+\] ", "", detail)  # XLA's log prefix
    raise ConfigError("--target", f"{target.path}: XLA could not use this description: {detail}")
  raise ConfigError("--target", f"{target.path}: too many unknown fields")


def plugin_problem(platform: str) -> str | None:
  """Why a deviceless compile for `platform` cannot run in this environment, or None."""
  if platform == "rocm":
    from jaxbench import rocm_aot
    if not plugin_installed("xla_rocm7"):
      return f"AMD targets need the ROCm PJRT plugin, not installed: {rocm_aot.EXTRA}"
    return rocm_aot.version_problem(rocm_aot.installed_versions())
  if not (plugin_installed("xla_cuda13") or plugin_installed("xla_cuda12")):
    return f"compiling for an NVIDIA GPU without one needs {AOT_EXTRA}"
  return None


# --- what the compiled step holds ----------------------------------------------------------------

def memory_report(analysis, device_memory: int | None, mem_fraction: float) -> dict:
  """Per-device bytes from XLA's buffer assignment against the device and JAX's pool."""
  from jaxbench import memory as memory_lib
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
            "temp_size_in_bytes", "generated_code_size_in_bytes")
  raw = {f: int(getattr(analysis, f, 0) or 0) for f in fields}
  m = {f.replace("_size_in_bytes", "_bytes"): v for f, v in raw.items()}
  m["total_bytes"] = memory_lib.xla_total(raw)  # donated arguments alias outputs: counted once
  m["device_memory_bytes"] = device_memory
  m["mem_fraction"] = mem_fraction
  # Training runs the step again and again, the next one queued while one runs. On an H200
  # (benchmarks/RESULTS.md, 2026-11-28) every step whose total fit the pool but whose total +
  # temporaries did not (mpt-1b batch 8, mpt-350m batch 16) ran its first step and ran out of
  # memory in the second, and every step within it ran: the queued step's temporaries needed a
  # second block (the likely reading; `jaxbench train` now runs such steps one at a time, see
  # program.queue_ahead, which is not yet checked on a GPU).
  m["with_next_step_bytes"] = m["total_bytes"] + m["temp_bytes"]
  if device_memory:
    pool = int(device_memory * mem_fraction)
    m["pool_bytes"] = pool
    m["fits"] = m["total_bytes"] <= pool
    m["short_by_bytes"] = max(0, m["total_bytes"] - pool)
    m["fits_with_next_step"] = m["with_next_step_bytes"] <= pool
  else:
    m["pool_bytes"] = m["fits"] = m["short_by_bytes"] = m["fits_with_next_step"] = None
  return m


# Exit codes of the verdicts (CONTRACT.md: 0 success, 2 bad input, 3 diverged; README's table).
EXIT_FITS, EXIT_REJECTED, EXIT_TIGHT, EXIT_DOES_NOT_FIT = 0, 1, 4, 5
VERDICT_EXIT = {"FITS": EXIT_FITS, "UNKNOWN": EXIT_FITS, "TIGHT": EXIT_TIGHT,
                "DOES NOT FIT": EXIT_DOES_NOT_FIT, "DID NOT COMPILE": EXIT_REJECTED}
_WORST_FIRST = ("DID NOT COMPILE", "DOES NOT FIT", "TIGHT", "FITS", "UNKNOWN")


def verdict(r: dict) -> str:
  """A report's verdict: DID NOT COMPILE, DOES NOT FIT, TIGHT (fits once, not with the next step's
  temporaries beside it), FITS, or UNKNOWN (the description gives no memory size)."""
  if not r["compiled"]:
    return "DID NOT COMPILE"
  m = r["memory"]
  if m.get("fits") is None:
    return "UNKNOWN"
  if not m["fits"]:
    return "DOES NOT FIT"
  return "TIGHT" if m.get("fits_with_next_step") is False else "FITS"


def exit_code(reports: list[dict]) -> int:
  """The exit code of the worst verdict among the targets' reports."""
  worst = min((verdict(r) for r in reports), key=_WORST_FIRST.index)
  return VERDICT_EXIT[worst]


_CUSTOM_CALL_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_FUSION_KIND = re.compile(r'"kind":"(__[\w$]+)"')


def kernel_report(hlo_text: str) -> dict:
  """Counts of the kernel kinds in the optimized HLO: vendor library calls and Triton fusions."""
  kinds: dict[str, int] = {}

  def add(kind):
    kinds[kind] = kinds.get(kind, 0) + 1

  for name in _CUSTOM_CALL_TARGET.findall(hlo_text):
    low = name.lower()
    if "cublas" in low or "hipblas" in low or "rocblas" in low:
      add(f"vendor BLAS GEMM ({name})")
    elif "cudnn" in low and ("fmha" in low or "attention" in low):
      add(f"cuDNN attention ({name})")
    elif name == "__gpu$xla.gpu.triton":  # a Pallas kernel (Triton), e.g. model.attention=pallas
      add(f"Pallas Triton kernel ({name})")
    else:
      add(f"custom call {name}")
  for kind in _FUSION_KIND.findall(hlo_text):
    if "triton" in kind and "gemm" in kind:
      add(f"Triton GEMM fusion ({kind})")
    elif "triton" in kind:
      add(f"Triton fusion ({kind})")
    else:
      add(f"fusion {kind}")
  return dict(sorted(kinds.items()))


def xla_cost(compiled) -> dict:
  """XLA's cost analysis (flops, bytes accessed) of the optimized module. A compile-only executable
  has none of its own, so the optimized HLO is analysed by XLA's generic cost model; custom calls
  (cuBLAS) count no flops there, and a loop body counts once."""
  import jax
  try:
    modules = compiled.runtime_executable().hlo_modules()
    cpu = jax.devices("cpu")[0].client
    total: dict[str, float] = {}
    for module in modules:
      for k, v in compat.hlo_module_cost_analysis(cpu, module).items():
        if k in ("flops", "bytes accessed", "transcendentals"):
          total[k] = total.get(k, 0.0) + float(v)
    return total
  except Exception as e:  # private API: say it is missing rather than guess
    return {"unavailable": f"{type(e).__name__}: {e}"}


def roofline(*, model_flops: float, xla: dict, has_loops: bool, has_library_gemms: bool,
             memory: dict, peak_tflops: float | None, bandwidth: float | None,
             remat: str = "none", peak_assumption: str = "") -> dict:
  """A lower bound on the step time per device: max(FLOPs / peak, bytes / bandwidth).

  Each term uses the larger of two counts that the step cannot beat: the model FLOPs (the count
  MFU uses) or XLA's FLOPs; XLA's bytes accessed or every argument and output byte once (the
  state is read and written each step). XLA's counts cover a loop body once and miss library
  calls, so they are lower bounds too; the report names which count set each term."""
  xla_flops = xla.get("flops")
  xla_bytes = xla.get("bytes accessed")
  flops, flops_source = model_flops, "model FLOPs (6N + 12 L d S per token)"
  if remat == "full":  # the forward runs twice: 2 of every 6 FLOPs again
    flops, flops_source = model_flops * 4 / 3, "model FLOPs x 4/3 (full remat recomputes the forward)"
  if xla_flops and xla_flops > model_flops:
    flops, flops_source = xla_flops, "XLA cost analysis (includes recomputation)"
  floor_bytes = memory["argument_bytes"] + memory["output_bytes"]
  moved, bytes_source = floor_bytes, "arguments + outputs, each byte once"
  if xla_bytes and xla_bytes > floor_bytes:
    moved, bytes_source = xla_bytes, "XLA cost analysis bytes accessed"
  notes = []
  if has_loops:
    notes.append("the step has loops (scan over layers / microbatches): XLA's counts cover one "
                 "trip of each loop body, so they understate; the bound stays a lower bound")
  if has_library_gemms:
    notes.append("library GEMM calls (cuBLAS) count no FLOPs in XLA's cost model")
  compute_s = flops / (peak_tflops * 1e12) if peak_tflops else None
  memory_s = moved / bandwidth if bandwidth else None
  terms = [t for t in (compute_s, memory_s) if t is not None]
  bound = max(terms) if terms else None
  return {
      "model_flops_per_device": model_flops, "xla_flops_per_device": xla_flops,
      "xla_bytes_accessed_per_device": xla_bytes, "flops_used": flops, "flops_source": flops_source,
      "bytes_used": moved, "bytes_source": bytes_source,
      "peak_tflops_per_device": peak_tflops, "bandwidth_bytes_per_s": bandwidth,
      "compute_bound_s": compute_s, "memory_bound_s": memory_s, "step_time_lower_bound_s": bound,
      "bound_by": None if bound is None else ("compute" if bound == compute_s else "memory"),
      "mfu_upper_bound": (model_flops / (bound * peak_tflops * 1e12)
                          if bound and peak_tflops else None),
      "peak_assumption": peak_assumption, "notes": notes,
  }


# --- when it does not fit: the cheapest change that does, found by compiling ---------------------

MAX_FIT_COMPILES = 6  # for one command: several targets that do not fit share them (2 at least)


def fit_candidates(r: dict) -> list[tuple[dict, str | None]]:
  """What to try when the step of report `r` does not fit, cheapest first: ({config key: value},
  None, or why it cannot work here). More microbatches keep every FLOP (the batch is accumulated
  in a loop); full remat recomputes the forward (a third more FLOPs); FSDP over every device
  (data parallelism turned into sharding) adds all-gathers and reduce-scatters each step, across
  hosts at scale. The first two shrink only the temporaries, so neither can help when the state
  alone (arguments, outputs, code) exceeds the pool; then only sharding can. Nor can k times the
  microbatches when the state and 1/k of the temporaries exceed it (the microbatch's activations
  shrink k-fold at best; the gradient accumulator does not), so that compile is left out too."""
  c, m = r["config"], r["memory"]
  mesh, mb, full = c["mesh"], c["microbatches"], c["remat"] == "full"
  shards = mesh["data"] * mesh["fsdp"]
  changes = [{"microbatches": 2 * mb}, {"microbatches": 4 * mb}]
  if not full:
    changes += [{"model.remat": "full"}, {"microbatches": 4 * mb, "model.remat": "full"}]
  if mesh["data"] > 1:
    wider = {"mesh.data": 1, "mesh.fsdp": shards}
    remat = {} if full else {"model.remat": "full"}
    changes += [wider, {**wider, "microbatches": 4 * mb, **remat}]
  state = m["total_bytes"] - m["temp_bytes"]
  out = []
  for change in changes:
    why = None
    n = change.get("microbatches", mb)
    if c["batch_size"] % (shards * n):
      why = (f"batch {c['batch_size']} does not split into {n} microbatches over {shards} batch "
             "shard(s)")
    elif "mesh.fsdp" not in change and state > m["pool_bytes"]:
      why = (f"the state alone ({_size(state)}) exceeds the pool; microbatches and remat shrink "
             "only temporaries")
    elif set(change) == {"microbatches"} and state + m["temp_bytes"] * mb / n > m["pool_bytes"]:
      why = (f"even 1/{n // mb} of the temporaries would need "
             f"{_size(state + m['temp_bytes'] * mb / n)}")
    out.append((change, why))
  return out


def override_flags(overrides: dict) -> str:
  return " ".join(f"--config.{k}={v}" for k, v in overrides.items())


def find_fit(r: dict, compile_with, progress, max_compiles: int = MAX_FIT_COMPILES,
             seconds_each: float | None = None) -> dict:
  """The first of fit_candidates(r) that compiles to FITS or TIGHT, by compiling each in turn
  (`compile_with(overrides)` returns its report), at most `max_compiles` of them: {"fits_with":
  the entry that fits or None, "tried": every candidate's entry, "compiles": how many ran}.
  `progress` is told each compile as it starts and ends (each can take a minute). Ctrl-C stops
  the search with what it found so far. `seconds_each`: what the first compile took, for the
  progress line's estimate."""
  candidates = fit_candidates(r)
  runnable = sum(why is None for _, why in candidates)
  name = r["target"]["name"]
  if runnable:
    each = seconds_each or r["lower_s"] + r["compile_s"]
    progress(f"{name}: DOES NOT FIT; compiling up to {min(runnable, max_compiles)} changes, "
             f"cheapest first, about {each:.0f}s each (--suggest=False skips this):")
  tried, fits_with, compiles = [], None, 0
  for overrides, why in candidates:
    if why is None and compiles == max_compiles:
      why = f"beyond the search's {max_compiles} compiles"
    if why is not None:
      tried.append({"overrides": overrides, "not_tried": why})
      continue
    compiles += 1
    progress(f"  {override_flags(overrides)} ...", end=" ")
    t0 = time.perf_counter()
    try:
      candidate = compile_with(overrides)
    except ConfigError as e:  # the change is not a valid config here (mesh, divisibility)
      compiles -= 1
      entry = {"overrides": overrides, "not_tried": str(e)}
    except KeyboardInterrupt:
      progress("interrupted")
      tried.append({"overrides": overrides, "not_tried": "interrupted"})
      break
    else:
      entry = {"overrides": overrides, "verdict": verdict(candidate),
               "seconds": time.perf_counter() - t0}
      if candidate["compiled"]:
        entry.update({k: candidate["memory"][k] for k in ("total_bytes", "pool_bytes")})
      else:
        entry["error"] = candidate["error"].splitlines()[0]
    tried.append(entry)
    progress(fit_outcome(entry) + (f" ({entry['seconds']:.0f}s)" if "seconds" in entry else ""))
    if entry.get("verdict") in ("FITS", "TIGHT"):
      fits_with = entry
      break
  return {"fits_with": fits_with, "tried": tried, "compiles": compiles}


def fit_outcome(entry: dict) -> str:
  """One tried change in a few words: "7.35 MiB of a 8.58 MiB pool: TIGHT"."""
  if "not_tried" in entry:
    return f"not tried: {entry['not_tried']}"
  if entry["verdict"] == "DID NOT COMPILE":
    return f"did not compile: {entry['error']}"
  return f"{_size(entry['total_bytes'])} of a {_size(entry['pool_bytes'])} pool: {entry['verdict']}"


def _size(n: float) -> str:
  """GiB, or MiB below a tenth of one (the tests' tiny pools)."""
  return f"{n / GIB:.2f} GiB" if n >= GIB / 10 else f"{n / 2**20:.2f} MiB"


def fit_search_lines(search: dict) -> list[str]:
  """find_fit's result for the report: the change that fits, or that nothing tried does."""
  found, tried = search["fits_with"], search["tried"]
  before = [e for e in tried if e is not found]
  lines = []
  if found:
    lines.append(f"  fits with {override_flags(found['overrides'])}: {fit_outcome(found)} "
                 f"(compiled; {search['compiles']} compile(s) searched, cheapest change first)")
  else:
    lines.append(f"  nothing tried fits ({search['compiles']} compile(s)); left: more devices "
                 "(a larger --topology, with mesh.fsdp), or a smaller batch or model")
  lines += [f"    {override_flags(e['overrides'])}: {fit_outcome(e)}" for e in before]
  return lines


# --- the command ---------------------------------------------------------------------------------

def default_topology(c) -> str:
  """One host with as many devices as the mesh names explicitly (1 when all axes are -1)."""
  sizes = [int(c.mesh[a]) for a in ("data", "fsdp", "tensor")]
  n = math.prod(s for s in sizes if s > 0)
  return f"1x1x{n}"


def compile_report(c, target: Target, topology_name: str, dump: str | None, warn) -> dict:
  import jax

  from jaxbench import data as data_lib
  from jaxbench import hlo, program
  from jaxbench import peak as peak_lib

  topo, target = topology(target, topology_name, warn)
  devices = list(topo.devices)
  setup = program.build(c, devices=devices)  # ConfigError: mesh vs topology, model checks
  state = program.abstract_state(setup)
  batch = jax.ShapeDtypeStruct(data_lib.SyntheticData(c).shape, jax.numpy.int32,
                               sharding=setup.batch_sharding)
  t0 = time.perf_counter()
  lowered = program.lower_step(setup, state, batch)
  lower_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  try:
    compiled = lowered.compile()
    error = None
  except Exception as e:  # the compiler's verdict is the finding
    compiled, error = None, f"{type(e).__name__}: {str(e).strip()[:2000]}"
  compile_s = time.perf_counter() - t0
  device_kind = devices[0].device_kind
  rocm = None
  if target.platform == "rocm":  # (only ever in rocm_aot's compiling child)
    from jaxbench import rocm_aot
    rocm = rocm_aot.findings(target.text)
    if error is None and not rocm["code_objects"]["ok"]:
      objects = rocm["code_objects"]
      error = (f"not an AMD compile: the compiler's code objects are {objects['found'] or 'none'}, "
               f"not {objects['requested']}")
  report = {
      "target": {"name": target.name, "path": target.path, "device": device_kind,
                 "platform": target.platform, "arch": target.arch,
                 "memory_bytes": target.memory_bytes,
                 "bandwidth_bytes_per_s": target.bandwidth_bytes_per_s,
                 "dropped_fields": list(target.dropped_fields)},
      "topology": topology_name, "n_devices": len(devices),
      "processes": len({d.process_index for d in devices}),
      "config": {"family": c.family, "preset": c.preset, "dtype": c.dtype,
                 "batch_size": c.batch_size, "microbatches": c.microbatches, "seq_len": c.seq_len,
                 "remat": c.model.remat, "scan_layers": c.model.scan_layers,
                 "mesh": setup.mesh_shape},
      "attention": program.describe_attention(c, setup.attention, setup.attention_reason),
      "n_params": setup.n_params, "flops_per_token": setup.flops["flops_per_token"],
      "jax": jax.__version__, "lower_s": lower_s, "compile_s": compile_s,
      "compiled": error is None,
  }
  if rocm is not None:
    report["rocm"] = rocm
  if error is not None:
    report["error"] = error
    return report
  text = compiled.as_text()
  if dump:
    os.makedirs(dump, exist_ok=True)
    with open(os.path.join(dump, "train_step.optimized.hlo.txt"), "w") as f:
      f.write(text)
  mem_fraction = float(os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION", DEFAULT_MEM_FRACTION))
  memory = memory_report(compiled.memory_analysis(), target.memory_bytes, mem_fraction)
  kernels = kernel_report(text)
  peak = peak_lib.table_peak(device_kind, "gpu", c.dtype, getattr(devices[0], "core_count", None))
  tokens_per_device = c.batch_size * c.seq_len / len(devices)
  report.update({
      "memory": memory, "kernels": kernels, "collectives": hlo.collectives(text),
      "peak": dataclasses.asdict(peak),
      "roofline": roofline(
          model_flops=setup.flops["flops_per_token"] * tokens_per_device, xla=xla_cost(compiled),
          has_loops=bool(re.search(r"\bwhile\(", text)),
          has_library_gemms=any(k.startswith("vendor BLAS") for k in kernels),
          memory=memory, peak_tflops=peak.tflops, bandwidth=target.bandwidth_bytes_per_s,
          remat=c.model.remat, peak_assumption=peak_assumption(c.dtype)),
  })
  return report


def _gib(n: float | None) -> str:
  return "?" if n is None else f"{n / GIB:.2f} GiB"


def rocm_lines(rocm: dict) -> list[str]:
  """What an AMD compile ran on: the plugin, the libraries it loaded, the code objects it wrote."""
  plugin = rocm.get("plugin", {}).get("jax-rocm7-plugin")
  standins = rocm.get("standins") or []
  libraries = (f"link-only stand-ins for {len(standins)} missing ROCm libraries"
               if standins else "ROCm's own libraries")
  if standins and rocm.get("real_rocm_libraries"):
    libraries = (f"ROCm's own libraries and link-only stand-ins for {len(standins)} missing ones")
  unexpected = rocm.get("unexpected_standin_calls") or {}
  called = ("" if not standins else
            f"; the compile called into them: {', '.join(unexpected)} (results may be wrong)"
            if unexpected else "; nothing but the plugin's load-time registrations called them")
  lines = [f"  ROCm plugin {plugin} with {libraries}{called}"]
  objects = rocm.get("code_objects") or {}
  if objects.get("ok"):
    lines.append(f"  code objects: {objects['count']} for {', '.join(objects['found'])} (ELF headers "
                 "checked); no autotuning without the GPU: kernel choices and temporaries can differ from a "
                 "compile on the card")
  return lines


def format_report(r: dict) -> str:
  from jaxbench import model
  c, t = r["config"], r["target"]
  mesh = " x ".join(f"{k}={v}" for k, v in c["mesh"].items())
  lines = [f"jaxbench compile: {c['family']}:{c['preset']} ({r['n_params'] / 1e6:,.1f}M params) "
           f"{c['dtype']}, batch {c['batch_size']} x {c['seq_len']} in {c['microbatches']} "
           f"microbatch(es), remat {c['remat']}, scan {c['scan_layers']}",
           f"  target {t['device']} ({t['name']}, {t['platform']}), topology {r['topology']}: "
           f"{r['n_devices']} devices in {r['processes']} process(es), mesh {mesh}; jax {r['jax']}",
           f"  attention {r['attention']['implementation']} ({r['attention']['reason']})"
           + (f"; {blocks}" if (blocks := model.attention_blocks_text(r["attention"])) else "")]
  if r.get("rocm"):
    lines += rocm_lines(r["rocm"])
  if not r["compiled"]:
    lines.append(f"  did NOT compile after {r['compile_s']:.1f}s: {r['error'].splitlines()[0]}")
    lines.append(f"verdict: DID NOT COMPILE (exit {EXIT_REJECTED})")
    return "\n".join(lines)
  lines.append(f"  compiled in {r['lower_s'] + r['compile_s']:.1f}s (lower {r['lower_s']:.1f}s + "
               f"compile {r['compile_s']:.1f}s), nothing run")
  m = r["memory"]
  lines.append(f"memory per device: {_gib(m['total_bytes'])} = arguments {_gib(m['argument_bytes'])} "
               f"+ outputs {_gib(m['output_bytes'])} - aliased {_gib(m['alias_bytes'])} + temporaries "
               f"{_gib(m['temp_bytes'])} + code {_gib(m['generated_code_bytes'])}")
  if m["device_memory_bytes"]:
    fits = ("FITS" if m["fits"] else f"DOES NOT FIT: short by {_gib(m['short_by_bytes'])}")
    lines.append(f"  {fits} in JAX's pool of {_gib(m['pool_bytes'])} ({m['mem_fraction']:.0%} of "
                 f"{_gib(m['device_memory_bytes'])}; XLA_PYTHON_CLIENT_MEM_FRACTION sets the share)")
    if m["fits"] and m.get("fits_with_next_step") is False:
      lines.append(f"  but TIGHT for training: with room for the next step's temporaries it needs "
                   f"{_gib(m['with_next_step_bytes'])}; steps like this ran one step and then ran "
                   "out of memory on an H200 with the next step queued (jaxbench train now runs "
                   "them one at a time; not yet checked on a GPU)")
  if r.get("fit_search"):
    lines += fit_search_lines(r["fit_search"])
  found = ", ".join(f"{k} x{v['count']} ({v['bytes'] / 2**20:,.1f} MiB)"
                    for k, v in r["collectives"].items() if v["count"]) or "none"
  lines.append(f"collectives: {found}")
  lines.append("kernels: " + (", ".join(f"{k} x{v}" for k, v in r["kernels"].items()) or "none"))
  lines += roofline_lines(r["roofline"], r["peak"])
  lines.append(f"verdict: {verdict(r)} (exit {VERDICT_EXIT[verdict(r)]})")
  return "\n".join(lines)


def peak_assumption(dtype: str) -> str:
  """Which peak the compute bound assumes (peak.table_peak's rows)."""
  return ("the datasheet's dense bf16 peak" if dtype == "bfloat16" else
          "the datasheet's dense float32 peak at default matmul precision")


def roofline_lines(rf: dict, peak: dict) -> list[str]:
  """The roofline as a bound in ms per device: which term binds, each term's count and rate, the
  MFU it leaves where that is not 100%, and how far measured steps were from such bounds."""
  bound = rf["step_time_lower_bound_s"]
  if bound is None:
    return [f"roofline: unknown ({peak['detail']})"]
  terms = {}  # name: (ms, what over what)
  if rf["compute_bound_s"] is not None:
    terms["compute"] = (rf["compute_bound_s"] * 1e3,
                        f"{rf['flops_used'] / 1e12:.3g} TFLOP ({rf['flops_source']}) at "
                        f"{rf['peak_tflops_per_device']:g} TFLOP/s, "
                        f"{rf.get('peak_assumption') or 'the datasheet peak'}")
  if rf["memory_bound_s"] is not None:
    terms["memory"] = (rf["memory_bound_s"] * 1e3,
                       f"{rf['bytes_used'] / GIB:.3g} GiB ({rf['bytes_source']}) at "
                       f"{rf['bandwidth_bytes_per_s'] / 1e12:.3g} TB/s, the described bandwidth")
  by = rf["bound_by"]
  lines = [f"roofline: step >= {bound * 1e3:.2f} ms per device, bound by {by}: {terms[by][1]}"]
  lines += [f"  {name} {ms:.2f} ms: {text}" for name, (ms, text) in terms.items() if name != by]
  mfu = rf["mfu_upper_bound"]
  if mfu is not None and mfu < 0.995:
    why = ("bytes over bandwidth exceed FLOPs over peak" if by == "memory" else
           "the bound's FLOPs include recomputation that MFU does not count")
    lines.append(f"  MFU <= {mfu:.1%} ({why})")
  low, high = MEASURED_OVER_BOUND
  measured = (f", here {bound * low * 1e3:.4g}-{bound * high * 1e3:.4g} ms" if by == "compute"
              else "")
  lines.append(f"  a floor, not a forecast: measured compute-bound steps on an H200 took "
               f"{low:g}-{high:g}x such bounds{measured} (benchmarks/RESULTS.md)")
  lines += [f"  note: {n}" for n in rf["notes"]]
  return lines


_KERNEL_GROUPS = (("Triton GEMM fusion", "Triton GEMM"), ("Triton fusion", "Triton"),
                  ("vendor BLAS GEMM", "library GEMM"), ("cuDNN attention", "cuDNN attention"),
                  ("Pallas Triton kernel", "Pallas kernel"),
                  ("custom call", "custom call"), ("fusion", "other fusion"))


def kernel_summary(kernels: dict) -> str:
  """kernel_report's kinds in a few words: "Triton GEMM 26, cuDNN attention 3, ..."."""
  groups: dict[str, int] = {}
  for kind, n in kernels.items():
    label = next((short for prefix, short in _KERNEL_GROUPS if kind.startswith(prefix)), kind)
    groups[label] = groups.get(label, 0) + n
  return ", ".join(f"{k} {v}" for k, v in groups.items()) or "none"


def _verdict_cell(r: dict) -> str:
  """The table's fits column: FITS, TIGHT, NO: short X GiB, or ? (no memory size)."""
  v = verdict(r)
  if v == "DOES NOT FIT":
    return f"NO: short {r['memory']['short_by_bytes'] / GIB:.1f} GiB"
  return {"UNKNOWN": "?"}.get(v, v)


def format_table(reports: list[dict]) -> str:
  """Several targets' reports of the same step as one table, then what sets the rows apart."""
  from jaxbench import model
  r0 = reports[0]
  c = r0["config"]
  mesh = " x ".join(f"{k}={v}" for k, v in c["mesh"].items())
  lines = [f"jaxbench compile: {c['family']}:{c['preset']} ({r0['n_params'] / 1e6:,.1f}M params) "
           f"{c['dtype']}, batch {c['batch_size']} x {c['seq_len']} in {c['microbatches']} "
           f"microbatch(es), remat {c['remat']}, scan {c['scan_layers']}; mesh {mesh}, topology "
           f"{r0['topology']} ({r0['n_devices']} devices); jax {r0['jax']}; nothing run", ""]
  head = (f"{'target':<9} {'device':<26} {'code':<7} {'attention':<9} {'compile':>8} "
          f"{'memory/device':>13} {'pool':>10}  {'fits':<18} {'step >=':>10}  bound")
  lines += [head, "-" * len(head)]
  for r in reports:
    t = r["target"]
    row = (f"{t['name']:<9} {t['device'][:26]:<26} {t.get('arch', '?'):<7} "
           f"{r['attention']['implementation']:<9} {r['lower_s'] + r['compile_s']:>7.1f}s ")
    if not r["compiled"]:
      lines.append(row + f"did NOT compile: {r['error'].splitlines()[0][:90]}")
      continue
    m, rf = r["memory"], r["roofline"]
    bound = rf["step_time_lower_bound_s"]
    by = rf["bound_by"] or "?"
    if by == "memory" and rf["mfu_upper_bound"] is not None:
      by += f", MFU <= {rf['mfu_upper_bound']:.0%}"
    lines.append(row + f"{m['total_bytes'] / GIB:>9.2f} GiB {_gib(m['pool_bytes']):>10}  "
                 f"{_verdict_cell(r):<18} " + (f"{bound * 1e3:>7.1f} ms  {by}" if bound else
                                          f"{'?':>10}  (no peak)"))
  lines.append("")
  width = max(len(r["target"]["name"]) for r in reports)
  searched = [r for r in reports if r.get("fit_search")]
  if searched:
    lines.append("to fit (found by compiling, cheapest change first):")
    for r in searched:
      first, *rest = fit_search_lines(r["fit_search"])
      lines.append(f"  {r['target']['name']:<{width}}{first[1:]}")
      lines += [f"  {'':<{width}}{line[1:]}" for line in rest]
  worst = min((verdict(r) for r in reports), key=_WORST_FIRST.index)
  lines.append(f"verdict: the worst of the targets, {worst} (exit {VERDICT_EXIT[worst]})")
  lines.append("")
  lines.append("kernels:")
  lines += [f"  {r['target']['name']:<{width}}  {kernel_summary(r['kernels'])}"
            for r in reports if r["compiled"]]
  lines.append("collectives (count, MiB per device):")
  for r in reports:
    if r["compiled"]:
      found = ", ".join(f"{k} {v['count']} ({v['bytes'] / 2**20:,.0f})"
                        for k, v in r["collectives"].items() if v["count"]) or "none"
      lines.append(f"  {r['target']['name']:<{width}}  {found}")
  notes = []
  implementations = {r["attention"]["implementation"] for r in reports}
  for r in reports:
    a, name = r["attention"], r["target"]["name"]
    if len(implementations) > 1:
      blocks = model.attention_blocks_text(a)
      reason = a["reason"]
      if r["target"]["platform"] == "rocm" and "needs an NVIDIA GPU" in reason:
        reason = "cuDNN's fused kernel is NVIDIA-only: XLA's attention, its scores materialized"
      notes.append(f"{name}: attention {a['implementation']} ({reason})"
                   + (f"; {blocks}" if blocks else ""))
    if r.get("rocm"):
      rocm = r["rocm"]
      objects = rocm.get("code_objects") or {}
      notes.append(f"{name}: ROCm plugin {rocm.get('plugin', {}).get('jax-rocm7-plugin')}, "
                   f"{rocm.get('libraries')}; "
                   + (f"{objects['count']} code objects for {', '.join(objects['found'])}, "
                      "checked"
                      if objects.get("ok") else "code objects NOT checked"))
      if rocm.get("unexpected_standin_calls"):
        notes.append(f"{name}: the compile called into stand-ins: "
                     f"{', '.join(rocm['unexpected_standin_calls'])} (results may be wrong)")
    if r["compiled"] and r["peak"].get("tflops") is None:
      notes.append(f"{name}: no peak for the roofline: {r['peak']['detail']}")
  notes.append("every row is compiled without its GPU, so without autotuning: kernel choices and "
               "temporaries can differ from a compile on the card (for an H200 the memory was "
               "within 0.7%: benchmarks/RESULTS.md)")
  notes.append("pool: JAX's allocator's share of the device (XLA_PYTHON_CLIENT_MEM_FRACTION, "
               "default 75%); TIGHT: fits once, not with the next step's temporaries beside it; "
               "step >=: roofline lower bound per device (compute: model FLOPs at the datasheet's "
               "dense peak; memory: bytes at the bandwidth, and the MFU that leaves); measured "
               f"compute-bound steps on an H200 took {MEASURED_OVER_BOUND[0]:g}-"
               f"{MEASURED_OVER_BOUND[1]:g}x such bounds")
  lines.append("notes:")
  lines += [f"  {n}" for n in notes]
  return "\n".join(lines)


def define_flags(fv) -> dict:
  """`jaxbench compile`'s own flags, beside the config's."""
  from absl import flags
  return {
      "target": flags.DEFINE_string("target", "h100", f"{', '.join(TARGETS)} or a "
                                    "GpuTargetConfigProto .txtpb file.", flag_values=fv),
      "topology": flags.DEFINE_string("topology", None, "PARTITIONSxHOSTSxDEVICES (default: "
                                      "1x1x<devices the mesh names>).", flag_values=fv),
      "dump": flags.DEFINE_string("dump", None, "Keep the optimized HLO (and XLA's dumps, PTX "
                                  "included) in this folder.", flag_values=fv),
      "json": flags.DEFINE_bool("json", False, "Print the report as JSON.", flag_values=fv),
      "report": flags.DEFINE_string("report", None, "Also write the report as JSON to this "
                                    "file (how `jaxbench sweep --compile_only` reads it).",
                                    flag_values=fv),
      "suggest": flags.DEFINE_bool("suggest", True, "When the step does not fit, compile a few "
                                   "changes (microbatches, remat, fsdp) and report the cheapest "
                                   "that fits.", flag_values=fv),
      "describe_local": flags.DEFINE_string("describe_local", None, "Write this machine's "
                                            "GPU as a target description to this file (empty: "
                                            "named after the card) and exit.", flag_values=fv),
      "device_index": flags.DEFINE_integer("device_index", 0, "Which local GPU "
                                           "--describe_local describes.", flag_values=fv),
  }


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  if cli.asks_for_help(argv):
    print(__doc__.strip())
    return 0
  from jaxbench import config as config_lib

  warn = warn_once(sys.stderr)
  # `--describe-local` as the docs of other tools spell it, with or without a value.
  argv = [re.sub(r"^--describe-local", "--describe_local", a) for a in argv]
  argv = ["--describe_local=" if a == "--describe_local" else a for a in argv]
  try:
    c, extra = config_lib.parse_flags(argv, define_flags)
    if extra["describe_local"] is not None:
      return _describe_local(extra["describe_local"] or None, extra["device_index"])
    targets = [read_target(name) for name in target_names(extra["target"])]
    topology_name = extra["topology"] or default_topology(c)
    if not re.fullmatch(r"\d+x\d+x\d+", topology_name):
      raise ConfigError("--topology", f"{topology_name!r}: expected PARTITIONSxHOSTSxDEVICES, "
                                      "e.g. 1x1x8 or 1x2x4")
    for target in targets:  # every target checked before anything compiles
      check_target(target)
    if extra["report"]:  # output paths too: not found wanting after minutes of compiling
      rundir.check_output_file(extra["report"], "--report")
    if extra["dump"]:
      rundir.check_output_folder(extra["dump"], "--dump")
      # XLA writes its own dumps (per-pass HLO, PTX) when its backend compiles; read once.
      os.environ["XLA_FLAGS"] = compat.xla_flags_with_dump(os.environ.get("XLA_FLAGS", ""),
                                                           os.path.abspath(extra["dump"]))
    _compile_only_environment()
    reports, seconds = [], []
    for target in targets:
      dump = extra["dump"] and (os.path.join(extra["dump"], target.name) if len(targets) > 1
                                else extra["dump"])
      t0 = time.perf_counter()
      reports.append(compile_for(c, argv, target, topology_name, dump, warn))
      seconds.append(time.perf_counter() - t0)
    short = [i for i, r in enumerate(reports) if verdict(r) == "DOES NOT FIT"]
    if extra["suggest"] and short:
      # A few compiles in all (each can take a minute), and at least two for each target.
      each = max(2, MAX_FIT_COMPILES // len(short))
      for i in short:
        compile_with = _compiler_with(argv, targets[i], topology_name, warn)
        reports[i]["fit_search"] = find_fit(reports[i], compile_with, _progress, each, seconds[i])
  except ConfigError as e:
    print(f"jaxbench compile: bad input: {e}", file=sys.stderr)
    return 2
  return _finish(reports, extra)


def _compiler_with(argv: list[str], target: Target, topology_name: str, warn):
  """compile_with(overrides) for find_fit: the command's step with `--config.KEY=VALUE` added,
  compiled for `target` with XLA's log of that compile held back (the progress line says what
  it found; its log is written out only if the compile raises)."""
  from jaxbench import config as config_lib

  def compile_with(overrides: dict) -> dict:
    changed = argv + [f"--config.{k}={v}" for k, v in overrides.items()]
    c, _ = config_lib.parse_flags(changed, define_flags)
    log = {"text": ""}
    try:
      with _captured_stderr() as log:
        return compile_for(c, changed, target, topology_name, None, warn)
    except Exception:
      sys.stderr.write(log["text"])
      raise
  return compile_with


def _progress(text: str, end: str = "\n") -> None:
  print(text, end=end, file=sys.stderr, flush=True)


def warn_once(stream):
  """A `warn` that writes each distinct message once: several targets can share a description
  (and its dropped fields), and every compile of one, the search for a change that fits
  included, reads it again."""
  seen = set()

  def warn(message):
    if message not in seen:
      seen.add(message)
      print(message, file=stream, flush=True)
  return warn


def target_names(value: str) -> list[str]:
  """--target: one name or path, or several separated by commas (one table)."""
  names = [t.strip() for t in value.split(",") if t.strip()]
  if not names:
    raise ConfigError("--target", f"no target in {value!r}; shipped: {', '.join(TARGETS)}")
  if len({n.lower() for n in names}) < len(names):
    raise ConfigError("--target", f"{value!r} names a target twice")
  return names


def check_target(target: Target) -> None:
  """ConfigError when this environment cannot compile for `target`."""
  problem = plugin_problem(target.platform)
  if problem:
    raise ConfigError("--target", f"{target.name}: {problem}")
  if target.platform == "rocm":
    from jaxbench import rocm_aot
    problem = rocm_aot.arch_problem(rocm_aot.gcn_arch(target.text)[0])
    if problem:
      raise ConfigError("--target", f"{target.path}: {problem}")


def compile_for(c, argv: list[str], target: Target, topology_name: str, dump: str | None,
                warn) -> dict:
  """compile_report for `target`: here for NVIDIA targets, in a child process for AMD ones (the
  ROCm plugin loads there, with stand-ins where ROCm is not installed; rocm_aot)."""
  if target.platform == "rocm":
    from jaxbench import rocm_aot
    if not rocm_aot.in_child():
      report = rocm_aot.compile_in_child(argv, target.path, warn, dump=dump)
      report["target"]["name"] = target.name  # the child knows the file, not the name asked for
      return report
    rocm_aot.start_deviceless()
  return compile_report(c, target, topology_name, dump, warn)


def _finish(reports: list[dict], extra: dict) -> int:
  """One target: its report; several: one table (JSON: {"targets": [report, ...]})."""
  out = reports[0] if len(reports) == 1 else {"targets": reports}
  if extra["report"]:
    rundir.write_json(extra["report"], out)
  if extra["json"]:
    print(json.dumps(out, indent=2))
  else:
    print(format_report(reports[0]) if len(reports) == 1 else format_table(reports))
  return exit_code(reports)


def _describe_local(path: str | None, index: int) -> int:
  from jaxbench import gpu_target
  path, gpu = gpu_target.write_local(path, index)
  facts = gpu_target.device_facts(gpu)
  a = gpu.attributes
  print(f"{gpu.name}: compute capability {a['compute_capability_major']}."
        f"{a['compute_capability_minor']}, {a['multiprocessor_count']} SMs, "
        f"{a['total_memory'] / GIB:.1f} GiB"
        + (f", {facts['memory_bandwidth'] / 1e12:.2f} TB/s" if "memory_bandwidth" in facts else "")
        + (f", {facts['clock_rate_ghz']:g} GHz" if "clock_rate_ghz" in facts else ""))
  if gpu.unanswered:
    print(f"  the driver did not answer: {', '.join(gpu.unanswered)} (left out)")
  print(f"wrote {path}; elsewhere: jaxbench compile --target={os.path.basename(path)} ...")
  return 0


def _compile_only_environment() -> None:
  """Nothing runs on a device: keep JAX on the CPU (a GPU that is here is left alone, and the CUDA
  plugin does not try to start on a machine without one)."""
  import jax
  jax.config.update("jax_platforms", "cpu")


if __name__ == "__main__":
  sys.exit(main())
