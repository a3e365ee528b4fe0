"""`jaxbench portability`: lowers the whole train step for each XLA platform, without the hardware.

  jaxbench portability [--config=...] [--config.KEY=VALUE ...] [--platforms=cpu,cuda,rocm,tpu]
                       [--devices=N] [--json=PATH] [--rocm_target=mi300x|mi250x|mi250|PATH|none]

For each platform, jax.export lowers the full step (forward, backward, AdamW update, the
configured accumulation and mesh) to StableHLO for that platform, and the report lists: lowered or
the error, the custom_call targets in the module (vendor kernels such as cuDNN attention: the parts
of the model that are not portable XLA), the sharding annotations, and the module size. It answers
the first question of a port: which parts of my step are vendor-specific?

What cannot be checked is said, not faked:
- Collectives are created by XLA's SPMD partitioner when the module is *compiled*, after lowering,
  so per platform the report counts sharding annotations; the collectives themselves are reported
  once, from the step compiled for this machine's own platform.
- Where `auto` would run cuDNN attention on an NVIDIA GPU (bfloat16), the CUDA row lowers it. Its
  custom calls have no compatibility guarantee in jax.export (a module serialized with them runs
  only with a matching jaxlib): the row names them and says so. Without the cuDNN library
  ("cuDNN is not detected") the row says why it failed and lowers the XLA attention path;
  `jaxbench compile --target=h100` builds the cuDNN path without a GPU (the `cuda-aot` extra).
- Lowering is not compiling: a platform's compiler may still reject or slow down what lowered.
  Where the `rocm-aot` extra is installed, the ROCm row is also compiled, by JAX's ROCm compiler,
  for an AMD GPU (`--rocm_target`, default mi300x; `none` only lowers): the gfx code objects it
  produced (checked), its memory per device and its collectives (`jaxbench compile` in a child
  process; see jaxbench/rocm_aot.py). `jaxbench compile --target=h100` does the same for CUDA.

`--devices=N` gives this machine N host devices (before JAX starts), so a sharded mesh can be
lowered on a laptop. Exit 0 when every requested platform lowered (and the ROCm row compiled, where
it was compiled), 1 when one did not, 2 on bad input.
"""

from __future__ import annotations

import json
import re
import sys
import time

from jaxbench import cli
from jaxbench.errors import bad_input, first_line

PLATFORMS = ("cpu", "cuda", "rocm", "tpu")

_CUSTOM_CALL = re.compile(r"custom_call\s*@([\w.$-]+)|call_target_name\s*=\s*\"([^\"]+)\"")
# One per annotation: `#sdy.sharding<...>` attributes (Shardy), constraints, and the older
# `mhlo.sharding = "..."` attributes (GSPMD).
_SHARDING = re.compile(r"#sdy\.sharding<|sdy\.sharding_constraint|mhlo\.sharding\s*=")


def module_report(text: str) -> dict:
  """What a lowered StableHLO module holds that a port cares about."""
  targets = {}
  for a, b in _CUSTOM_CALL.findall(text):
    name = a or b
    targets[name] = targets.get(name, 0) + 1
  return {"custom_calls": dict(sorted(targets.items())),
          "sharding_annotations": len(_SHARDING.findall(text)),
          "module_bytes": len(text.encode())}


_NO_GUARANTEE = "Cannot serialize code with custom calls whose targets have no compatibility"


def unguaranteed_custom_calls(error: BaseException) -> tuple[str, ...]:
  """The custom-call targets jax.export refused for lack of a compatibility guarantee (its
  ValueError lists the operations), or () for any other error."""
  text = str(error)
  if not isinstance(error, ValueError) or _NO_GUARANTEE not in text:
    return ()
  return tuple(sorted({a or b for a, b in _CUSTOM_CALL.findall(text)}))


def lower_for(platform: str, setup, abstract_state, abstract_batch) -> dict:
  """jax.export of the jitted train step for `platform`; a row of the report. Custom calls that
  jax.export refuses to serialize for want of a compatibility guarantee (cuDNN attention's) are
  allowed on a second try and named in the row's note: they are what ties the step to a vendor."""
  from jax import export

  from jaxbench import program, sharding

  def exported(allowed):
    with sharding.activation_mesh(setup.mesh):
      return export.export(
          program.jit_step(setup), platforms=(platform,),
          disabled_checks=[export.DisabledSafetyCheck.custom_call(t) for t in allowed])(
              abstract_state, abstract_batch)

  t0 = time.perf_counter()
  allowed: tuple[str, ...] = ()
  try:
    try:
      module = exported(allowed)
    except ValueError as e:
      allowed = unguaranteed_custom_calls(e)
      if not allowed:
        raise
      module = exported(allowed)
    row = {"platform": platform, "lowered": True, **module_report(module.mlir_module())}
    if allowed:
      row["unguaranteed_custom_calls"] = list(allowed)
      row["note"] = (f"{', '.join(allowed)}: custom calls without a compatibility guarantee in "
                     "jax.export (a module serialized with them runs only with a matching jaxlib)")
  except Exception as e:  # the error is the finding
    row = {"platform": platform, "lowered": False, "error": f"{type(e).__name__}: {first_line(e)}"}
  row["seconds"] = time.perf_counter() - t0
  row["attention"] = setup.attention
  return row


def _cudnn_would_run(c) -> bool:
  """Whether `auto` (or a `cudnn` request) would run cuDNN attention on an NVIDIA GPU."""
  head_dim = c.model.d_model // c.model.n_heads
  return (c.model.attention in ("auto", "cudnn") and c.dtype == "bfloat16" and head_dim <= 128
          and head_dim % 8 == 0 and c.model.position != "alibi")


def _with_attention(c, setup, attention: str):
  """`setup` with the model built for another attention implementation."""
  import dataclasses

  from jaxbench import model as model_lib
  cfg = model_lib.ModelConfig.from_config(c, attention)
  return dataclasses.replace(setup, model_cfg=cfg, model=model_lib.Transformer(cfg),
                             attention=attention)


def _cudnn_row(c, setup, abstract_state, abstract_batch) -> dict:
  """The CUDA row with the cuDNN attention a GPU would run; if it cannot be lowered here (no CUDA:
  "cuDNN is not detected"), the XLA-path row with the reason."""
  row = lower_for("cuda", _with_attention(c, setup, "cudnn"), abstract_state, abstract_batch)
  if row["lowered"]:
    return row
  fallback = lower_for("cuda", setup, abstract_state, abstract_batch)
  fallback["note"] = (f"cuDNN fused attention did not lower here ({row['error']}): lowered the "
                      f"{setup.attention} attention path instead; `jaxbench compile "
                      "--target=h100` builds the cuDNN path without a GPU (the cuda-aot extra)")
  return fallback


def config_args(argv: list[str]) -> list[str]:
  """The --config flags of `argv` (program name first), in either spelling: what a `jaxbench
  compile` of the same step needs."""
  out = []
  for i, arg in enumerate(argv[1:], start=1):
    if arg.startswith("--config"):
      out.append(arg)
      if "=" not in arg and i + 1 < len(argv):
        out.append(argv[i + 1])
  return out


def rocm_compile(argv: list[str], target: str, n_devices: int, attention: str) -> dict:
  """The step compiled for AMD `target` by JAX's ROCm compiler (a `jaxbench compile` child), in
  brief: what the ROCm row adds to the lowering. A cudnn request compiles the XLA attention, as
  the row lowered it."""
  from jaxbench import compile as compile_lib
  from jaxbench import rocm_aot
  t = compile_lib.read_target(target)
  if t.platform != "rocm":
    from jaxbench.errors import ConfigError
    raise ConfigError("--rocm_target", f"{target}: not an AMD description (platform {t.platform})")
  compile_lib.check_target(t)
  notes = []
  args = config_args(argv) + (["--config.model.attention=auto"] if attention == "cudnn" else [])
  r = rocm_aot.compile_in_child(["jaxbench compile", *args, f"--topology=1x1x{n_devices}"], t.path,
                                notes.append)
  out = {"target": target, "device": r["target"]["device"], "arch": t.arch,
         "compiled": r["compiled"], "seconds": r["lower_s"] + r["compile_s"]}
  if not r["compiled"]:
    return {**out, "error": first_line(RuntimeError(r.get("error", "")))}
  objects = r["rocm"]["code_objects"]
  return {**out, "code_objects": objects["count"], "code_object_target": ", ".join(objects["found"]),
          "libraries": r["rocm"]["libraries"],
          "memory_per_device_bytes": r["memory"]["total_bytes"], "fits": r["memory"]["fits"],
          "collectives": r["collectives"], "kernels": compile_lib.kernel_summary(r["kernels"])}


def report(c, platforms) -> dict:
  import jax

  from jaxbench import data as data_lib
  from jaxbench import hlo, program
  from jaxbench.errors import ConfigError

  local = jax.devices()[0].platform
  attention_requested = c.model.attention
  if attention_requested == "cudnn" and local != "gpu":
    # The check in train would reject it here; lower the XLA path and say why, per platform.
    c.model.attention = "auto"
  setup = program.build(c)
  abstract_state = program.abstract_state(setup)
  batch_shape = data_lib.SyntheticData(c).shape
  abstract_batch = jax.ShapeDtypeStruct(batch_shape, jax.numpy.int32, sharding=setup.batch_sharding)
  rows = []
  c.model.attention = attention_requested
  for platform in platforms:
    if platform == "cuda" and setup.attention != "cudnn" and _cudnn_would_run(c):
      row = _cudnn_row(c, setup, abstract_state, abstract_batch)
    elif platform in ("cuda", "rocm") and setup.attention == "pallas-interpret":
      # The Pallas kernel a GPU runs (Triton), not the interpreted one this CPU runs.
      row = lower_for(platform, _with_attention(c, setup, "pallas"), abstract_state, abstract_batch)
    else:
      row = lower_for(platform, setup, abstract_state, abstract_batch)
    if platform in ("rocm", "cpu", "tpu") and attention_requested == "cudnn":
      row["note"] = "cudnn attention is CUDA-only: lowered the XLA attention path"
    if platform == "tpu" and attention_requested == "pallas":
      row["note"] = "Pallas's Triton attention is for GPUs: lowered its interpreted form"
    rows.append(row)
  # The collectives exist only after SPMD partitioning: compile once, for this machine.
  try:
    compiled = program.lower_step(setup, abstract_state, abstract_batch).compile()
    collectives = hlo.collectives(compiled.as_text())
  except ConfigError:
    raise
  except Exception as e:
    collectives = {"unavailable": first_line(e)}
  return {"config": {"family": c.family, "preset": c.preset, "dtype": c.dtype,
                     "attention_requested": attention_requested, "mesh": setup.mesh_shape,
                     "batch_size": c.batch_size, "microbatches": c.microbatches,
                     "seq_len": c.seq_len},
          "jax": jax.__version__, "local_platform": local, "n_devices": len(setup.devices),
          "platforms": rows,
          "collectives_compiled_for": local, "collectives": collectives}


def format_table(r: dict) -> str:
  c = r["config"]
  mesh = " x ".join(f"{k}={v}" for k, v in c["mesh"].items())
  w = max([10] + [len(row["attention"]) + 1 for row in r["platforms"]])  # the attention column
  lines = [f"jaxbench portability: {c['family']}:{c['preset']} {c['dtype']}, mesh {mesh} over "
           f"{r['n_devices']} {r['local_platform']} device(s), jax {r['jax']}", "",
           f"{'platform':<9} {'lowered':<8} {'attention':<{w}} {'module KiB':>10} {'shardings':>9}  "
           "custom calls / error"]
  for row in r["platforms"]:
    if row["lowered"]:
      calls = ", ".join(f"{k} x{v}" for k, v in row["custom_calls"].items()) or "none (pure XLA)"
      lines.append(f"{row['platform']:<9} {'yes':<8} {row['attention']:<{w}} "
                   f"{row['module_bytes'] / 1024:>10.0f} {row['sharding_annotations']:>9}  {calls}")
    else:
      lines.append(f"{row['platform']:<9} {'NO':<8} {row['attention']:<{w}} {'':>10} {'':>9}  "
                   f"{row['error']}")
    if row.get("note"):
      lines.append(f"{'':<9} note: {row['note']}")
    compiled = row.get("compiled_for")
    if compiled and compiled["compiled"]:
      found = ", ".join(f"{k} x{v['count']}" for k, v in compiled["collectives"].items()
                        if v["count"]) or "no collectives"
      memory = compiled["memory_per_device_bytes"] / 2**30
      lines.append(f"{'':<9} compiled for {compiled['device']} ({compiled['arch']}) in "
                   f"{compiled['seconds']:.1f}s: {compiled['code_objects']} code objects for "
                   f"{compiled['code_object_target']} (checked), {memory:.2f} GiB per device, "
                   f"{found}; kernels: {compiled['kernels']}")
    elif compiled:
      lines.append(f"{'':<9} did NOT compile for {compiled['device']} ({compiled['arch']}): "
                   f"{compiled['error']}")
    elif row["platform"] == "rocm" and row.get("not_compiled"):
      lines.append(f"{'':<9} not compiled: {row['not_compiled']}")
  coll = r["collectives"]
  if "unavailable" in coll:
    lines.append(f"\ncollectives: unavailable ({coll['unavailable']})")
  else:
    found = ", ".join(f"{k} x{v['count']} ({v['bytes'] / 2**20:.2f} MiB)"
                      for k, v in coll.items() if v["count"]) or "none"
    lines.append(f"\ncollectives after SPMD partitioning (compiled for {r['collectives_compiled_for']}): "
                 f"{found}")
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  if cli.asks_for_help(argv):
    print(__doc__.strip())
    return 0
  from absl import flags

  from jaxbench import config as config_lib
  from jaxbench.errors import ConfigError

  def define(fv):
    return {
        "platforms": flags.DEFINE_list("platforms", list(PLATFORMS), "XLA platforms to lower for.",
                                       flag_values=fv),
        "devices": flags.DEFINE_integer("devices", 0, "Host devices to create (0: as found).",
                                        flag_values=fv),
        "json": flags.DEFINE_string("json", None, "Also write the report as JSON here.",
                                    flag_values=fv),
        "rocm_target": flags.DEFINE_string("rocm_target", "mi300x", "The AMD GPU the ROCm row is "
                                           "compiled for where the rocm-aot extra is installed "
                                           "(a `jaxbench compile` target), or none.",
                                           flag_values=fv),
    }
  try:
    c, extra = config_lib.parse_flags(argv, define)
    platforms = [p.strip().lower() for p in extra["platforms"] if p.strip()]
    unknown = [p for p in platforms if p not in PLATFORMS]
    if unknown or not platforms:
      raise ConfigError("--platforms", f"{','.join(unknown) or 'none given'}; allowed: "
                                       f"{', '.join(PLATFORMS)}")
    if extra["devices"] < 0:
      raise ConfigError("--devices", f"{extra['devices']} must be >= 0")
    if extra["json"]:
      from jaxbench import rundir as rundir_lib
      rundir_lib.check_output_file(extra["json"], "--json")  # before the work, not after it
    if extra["devices"]:
      _set_host_devices(extra["devices"])
    r = report(c, platforms)
    rocm_row = next((row for row in r["platforms"] if row["platform"] == "rocm"), None)
    if rocm_row and (extra["rocm_target"] or "none").lower() != "none":
      from jaxbench import compile as compile_lib
      from jaxbench import rocm_aot
      problem = compile_lib.plugin_problem("rocm") or rocm_aot.toolchain_problem()
      if problem:
        rocm_row["not_compiled"] = problem
      else:
        rocm_row["compiled_for"] = rocm_compile(argv, extra["rocm_target"], r["n_devices"],
                                                r["config"]["attention_requested"])
  except ConfigError as e:
    return bad_input("jaxbench portability", e)
  print(format_table(r))
  if extra["json"]:
    with open(extra["json"], "w") as f:
      json.dump(r, f, indent=2)
      f.write("\n")
  ok = all(row["lowered"] and row.get("compiled_for", {}).get("compiled", True)
           for row in r["platforms"])
  return 0 if ok else 1


def _set_host_devices(n: int) -> None:
  """N CPU devices; JAX allows it only before its backends start."""
  import jax

  from jaxbench.errors import ConfigError
  try:
    jax.config.update("jax_num_cpu_devices", n)
  except Exception as e:  # backends already started (in-process callers)
    raise ConfigError("--devices", f"cannot set the host device count now: {first_line(e)}") from None


if __name__ == "__main__":
  sys.exit(main())
