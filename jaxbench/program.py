"""The compiled program, apart from how it runs: config -> checks -> mesh -> model -> shardings
-> the jitted train step, lowered and compiled. `jaxbench train` runs it (train.py); `jaxbench
compile`, `portability` and `export-hf` lower, compile or restore into it without running a step.

Also the process settings a program depends on and that must be made before any backend starts:
`deterministic`'s XLA flags and the host allocator."""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Any

import flax.linen as nn
import jax
import optax

from jaxbench import compat
from jaxbench import config as config_lib
from jaxbench import flops as flops_lib
from jaxbench import hlo
from jaxbench import hostalloc
from jaxbench import memory as memory_lib
from jaxbench import model as model_lib
from jaxbench import optim
from jaxbench import sharding
from jaxbench import step as step_lib
from jaxbench import sysinfo
from jaxbench.errors import ConfigError


def choose_attention(c, device) -> tuple[str, str]:
  """The attention implementation that runs on `device`'s kind, and why (recorded in run.json).
  `device` may be a compile-only device of a GPU that is not here (`jaxbench compile`)."""
  requested = c.model.attention
  head_dim = c.model.d_model // c.model.n_heads
  platform = device.platform
  if requested == "pallas":
    problem = model_lib.pallas_problem(c.seq_len, c.model.position)
    if platform not in ("gpu", "cuda", "rocm", "cpu"):
      problem = f"Pallas's Triton attention runs on GPUs (and interpreted on the CPU), not {platform}"
    if problem:
      raise ConfigError("model.attention", f"pallas: {problem}; allowed here: auto, xla, jax")
    if platform == "cpu":
      return "pallas-interpret", "requested: Pallas's Triton flash attention, interpreted on the CPU"
    return "pallas", "requested: Pallas's Triton flash attention (Triton, either GPU vendor)"
  cuda = platform in ("gpu", "cuda") and "NVIDIA" in device.device_kind.upper()
  problem = cudnn_problem(c, cuda, platform)
  if requested == "cudnn" and problem:
    raise ConfigError("model.attention", f"cudnn: {problem}; allowed here: auto, xla, jax")
  if requested != "auto":
    return requested, "requested"
  if problem is None:
    problem = _cudnn_probe(device, head_dim, c.model.n_heads, c.model.n_kv_heads)
    if problem:
      problem = "cuDNN attention did not lower here: " + problem
  if problem:
    return "xla", "auto: " + problem
  return "cudnn", "auto: cuDNN fused attention lowered for this shape"


def describe_attention(c, attention: str, reason: str) -> dict:
  """run.json's (and `jaxbench compile`'s) `attention`: the implementation and why, and for the
  xla attention its query blocks and the share of the scores they compute."""
  blocks = (model_lib.attention_blocks(c.seq_len, c.model.attention_block)
            if attention == "xla" else {})
  return {"implementation": attention, "reason": reason, **blocks}


def cudnn_problem(c, cuda: bool, platform: str = "this backend") -> str | None:
  """Why the cuDNN fused attention cannot take config `c` (None: it may; the probe decides), from
  the config alone: what jax.nn.dot_product_attention's cuDNN path accepts
  (jax/_src/cudnn/fused_attention_stablehlo.py)."""
  head_dim = c.model.d_model // c.model.n_heads
  problem = None
  if not cuda:
    problem = f"cuDNN fused attention needs an NVIDIA GPU; this backend is {platform}"
  elif c.dtype != "bfloat16":
    problem = f"cuDNN fused attention needs bfloat16 (or float16), dtype is {c.dtype}"
  elif head_dim > 128 or head_dim % 8:
    problem = f"cuDNN fused attention needs head_dim <= 128 and a multiple of 8, got {head_dim}"
  elif c.model.position == "alibi":
    problem = "ALiBi runs on the XLA path (its float32 bias)"
  return problem


def _cudnn_probe(device, head_dim: int, n_heads: int, n_kv_heads: int) -> str | None:
  on_device = jax.sharding.make_single_device_sharding(device)  # jax 0.12 deprecates the class
  q = jax.ShapeDtypeStruct((1, 128, n_heads, head_dim), jax.numpy.bfloat16, sharding=on_device)
  kv = jax.ShapeDtypeStruct((1, 128, n_kv_heads, head_dim), jax.numpy.bfloat16, sharding=on_device)
  try:
    jax.jit(functools.partial(model_lib.dot_product_attention, implementation="cudnn")).lower(q, kv, kv)
    return None
  except Exception as e:  # any failure means: not available here; the reason is recorded
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def cost_analysis(compiled) -> dict:
  try:
    cost = compiled.cost_analysis()
  except Exception:
    return {}
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else {}
  return {k: float(v) for k, v in (cost or {}).items()
          if k in ("flops", "bytes accessed", "transcendentals", "optimal_seconds")}


def memory_analysis(compiled) -> dict:
  try:
    mem = compiled.memory_analysis()
  except Exception:
    return {}
  if mem is None:
    return {}
  fields = ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes",
            "alias_size_in_bytes", "generated_code_size_in_bytes")
  return {f: int(getattr(mem, f)) for f in fields if hasattr(mem, f)}


def queue_ahead(memory_analysis: dict, limit: int | None, runs_inline: bool = False
                ) -> tuple[bool, str]:
  """Whether the loop may queue the next step while one runs, and why. Where a dispatch runs the
  step to its end (`runs_inline`: JAX CPU steps under host_allocator), queueing the next step
  would finish it inside this step's time, so each step is timed from its own dispatch. A queued
  step needs its temporaries while those of the step in flight may still be held (the runtime
  releases them once that step is done), so with a step whose total plus a second set of
  temporaries exceeds the allocator's limit the loop runs one step at a time. On an H200, such
  steps (mpt-1b batch 8: 74 of 105 GiB, 59.6 GiB of temporaries) ran one step and ran out of
  memory in the second with queueing on (benchmarks/RESULTS.md). One at a time, the loop also
  transfers each batch only once the step before is done (see _train)."""
  if runs_inline:
    return False, ("off: JAX runs CPU steps on the calling thread (host_allocator), each step "
                   "timed from its dispatch")
  if not limit or "temp_size_in_bytes" not in memory_analysis:
    return True, "on"
  need = memory_lib.xla_total(memory_analysis) + memory_analysis["temp_size_in_bytes"]
  if need <= limit:
    return True, "on"
  return False, (f"off: the step with a second step's temporaries needs {need / 2**30:.2f} GiB of "
                 f"the device's {limit / 2**30:.2f} GiB, so steps run one at a time")


def _state_shardings(model, optimizer, c, mesh):
  """Shardings of the whole train state from the params' logical axis names, without allocating."""
  boxed = jax.eval_shape(functools.partial(step_lib.init_state, model, optimizer, seq_len=c.seq_len,
                                           unbox=False), jax.random.key(0))
  params = sharding.param_shardings(boxed.params, mesh)
  opt_state = optax.tree_map_params(
      optimizer, lambda _, s: s, jax.eval_shape(optimizer.init, _unboxed(boxed.params)), params,
      transform_non_params=lambda _: sharding.replicated(mesh))
  return step_lib.TrainState(step=sharding.replicated(mesh), params=params, opt_state=opt_state), boxed


def _unboxed(tree):
  return nn.unbox(tree)


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything a run derives from its config before anything is allocated or compiled."""
  config: Any
  devices: list
  mesh_shape: dict
  mesh: Any
  attention: str
  attention_reason: str
  model_cfg: model_lib.ModelConfig
  model: model_lib.Transformer
  optimizer: optax.GradientTransformation
  lr_schedule: Any
  state_shardings: step_lib.TrainState
  batch_sharding: Any
  n_params: int
  param_counts: dict
  flops: dict


def build(c, devices=None) -> Setup:
  """Config -> checks -> mesh -> model -> shardings. Raises ConfigError on bad input."""
  devices = list(devices or jax.devices())
  mesh_shape = config_lib.validate(c, len(devices))
  attention, attention_reason = choose_attention(c, devices[0])
  model_cfg = model_lib.ModelConfig.from_config(c, attention)
  model = model_lib.Transformer(model_cfg)
  counts = model_lib.param_count(model_cfg)
  optimizer = optim.make_optimizer(c)
  mesh = sharding.make_mesh(mesh_shape, devices)
  state_shardings, boxed = _state_shardings(model, optimizer, c, mesh)
  n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(_unboxed(boxed.params)))
  if n_params != counts["total"]:
    raise RuntimeError(f"parameter tree has {n_params:,} params, the analytic count is "
                       f"{counts['total']:,}: a bug in model.param_count or the model")
  return Setup(config=c, devices=devices, mesh_shape=mesh_shape, mesh=mesh, attention=attention,
               attention_reason=attention_reason, model_cfg=model_cfg, model=model,
               optimizer=optimizer, lr_schedule=optim.schedule(c), state_shardings=state_shardings,
               batch_sharding=sharding.batch_sharding(mesh), n_params=n_params,
               param_counts=counts, flops=flops_lib.flops_per_token(model_cfg, c.seq_len))


def init_state(s: Setup) -> step_lib.TrainState:
  """The train state, created sharded: no parameter is ever whole on one device."""
  init = jax.jit(functools.partial(step_lib.init_state, s.model, s.optimizer,
                                   seq_len=s.config.seq_len), out_shardings=s.state_shardings)
  with sharding.activation_mesh(s.mesh):
    return init(jax.random.key(s.config.seed))


def abstract_state(s: Setup):
  """The train state as ShapeDtypeStructs carrying its shardings: enough to lower, compile or
  restore a checkpoint into, with nothing allocated."""
  shapes = jax.eval_shape(functools.partial(step_lib.init_state, s.model, s.optimizer,
                                            seq_len=s.config.seq_len), jax.random.key(s.config.seed))
  return jax.tree.map(lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh),
                      shapes, s.state_shardings)


def jit_step(s: Setup):
  """The jitted train step with its shardings; the state is donated."""
  train_step = step_lib.make_train_step(s.model, s.optimizer, s.lr_schedule,
                                          s.config.loss_chunk_size)
  return jax.jit(train_step, in_shardings=(s.state_shardings, s.batch_sharding),
                 out_shardings=(s.state_shardings, sharding.replicated(s.mesh)), donate_argnums=0)


def lower_step(s: Setup, state, batch):
  """Traces and lowers the step (activation constraints need the mesh while tracing)."""
  with sharding.activation_mesh(s.mesh):
    return jit_step(s).lower(state, batch)


# What `deterministic=True` sets, per backend, before JAX starts its backends.
DETERMINISTIC_XLA_FLAGS = ("--xla_gpu_deterministic_ops=true",)  # GPU: no atomics, fixed reductions


def apply_determinism(c) -> dict:
  """Sets what `deterministic` needs and says what was done (for run.json). XLA reads XLA_FLAGS
  once, when a backend starts, so this must run before anything touches a device."""
  if not c.deterministic:
    return {"requested": False}
  started = compat.backends_started()  # and so has read XLA_FLAGS already
  added = []
  current = os.environ.get("XLA_FLAGS", "")
  contrary = []
  for flag in DETERMINISTIC_XLA_FLAGS:
    name = flag.split("=")[0]
    if flag in current.split():
      continue
    (contrary if name in current else added).append(flag)
  if contrary:
    return {"requested": True, "xla_flags_added": [], "applied": False,
            "note": f"XLA_FLAGS sets {', '.join(f.split('=')[0] for f in contrary)} otherwise; "
                    "left as the user set it"}
  if added and not started:
    os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
  return {"requested": True, "xla_flags_added": added if not started else [],
          "applied": not (added and started),
          "note": ("XLA's GPU backend runs deterministic ops (no atomics in reductions or "
                   "scatters); the CPU backend gives identical results run to run for the same "
                   "program and thread count; TPU programs are deterministic by construction")
          if not (added and started) else "the backend had already started: flags not applied"}


def apply_host_allocator(c) -> dict:
  """Sets the process's malloc per `host_allocator` (jaxbench/hostalloc.py), once, before any
  backend starts; returns what was done (run.json's `host_allocator`)."""
  config_lib.check_choice(c, "host_allocator", hostalloc.MODES)  # validate() runs after this
  return hostalloc.configure(c.host_allocator, c.framework, jax.config.jax_platforms or "")


@dataclasses.dataclass(frozen=True)
class CompiledStep:
  """The compiled train step, what XLA says of it, and how a loop may run it."""
  compiled: Any
  lowered: Any
  lower_s: float
  compile_s: float
  cost: dict  # XLA's cost analysis (cost_analysis)
  memory: dict  # XLA's memory analysis (memory_analysis)
  collectives: dict
  queue_ahead: bool  # the next step may be queued while one runs (queue_ahead)
  queue_ahead_reason: str
  runs_inline: bool  # a dispatch runs the step to its end (JAX's CPU steps under host_allocator)

  def describe(self, c, flops: dict) -> dict:
    """run.json's `compile`: the times, XLA's analyses and the model's FLOPs per step."""
    loops_note = None
    if c.model.scan_layers or c.microbatches > 1:
      # XLA's cost analysis counts a while-loop body once, not once per trip.
      loops_note = ("xla_flops_per_step_per_device is null: the step has loops (scan_layers or "
                    "microbatches) and XLA counts a loop body once, so its flops cover one layer / "
                    "one microbatch; use scan_layers=False, microbatches=1 to compare")
    return {"lower_s": self.lower_s, "compile_s": self.compile_s,
            "xla_cost_analysis": self.cost, "xla_memory_analysis": self.memory,
            "xla_cost_analysis_note": loops_note,
            "collectives": self.collectives,
            "xla_flops_per_step_per_device": None if loops_note else self.cost.get("flops"),
            "model_flops_per_step": flops["flops_per_token"] * c.batch_size * c.seq_len}


def abstract_batch(s: Setup):
  """A global batch as a ShapeDtypeStruct with its sharding: [microbatches, rows, seq_len + 1]."""
  c = s.config
  return jax.ShapeDtypeStruct((c.microbatches, c.batch_size // c.microbatches, c.seq_len + 1),
                              jax.numpy.int32, sharding=s.batch_sharding)


def compile_step(s: Setup) -> CompiledStep:
  """Lowers and compiles the step for the abstract state (nothing allocated), timed apart, with
  XLA's analyses and whether a loop may queue the next step while one runs (queue_ahead)."""
  t0 = time.perf_counter()
  lowered = lower_step(s, abstract_state(s), abstract_batch(s))
  lower_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  memory = memory_analysis(compiled)
  try:
    collectives = hlo.collectives(compiled.as_text())
  except Exception as e:  # a backend without HLO text: say so rather than report no traffic
    collectives = {"unavailable": f"{type(e).__name__}: {e}"}
  runs_inline = s.devices[0].platform == "cpu" and not hostalloc.cpu_dispatch_async()
  ahead, reason = queue_ahead(memory, sysinfo.memory_limit_per_device(s.devices), runs_inline)
  return CompiledStep(compiled=compiled, lowered=lowered, lower_s=lower_s, compile_s=compile_s,
                      cost=cost_analysis(compiled), memory=memory, collectives=collectives,
                      queue_ahead=ahead, queue_ahead_reason=reason, runs_inline=runs_inline)
