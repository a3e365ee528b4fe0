"""`jaxbench train --config.framework=torch`: the PyTorch twin's run, timed as the JAX run is.

The path of a run, in order (as jaxbench/train.py): config -> checks -> process group -> model
with the JAX run's initial weights (converted) -> parallelize (DDP / FSDP2, compile) -> warm-up
(torch.compile's compilation, timed apart as compile_s) -> timed steps -> the same run directory
files (run.json, metrics.jsonl, summary.json), run by the JAX run's harness (harness.py: the same
timing rules by construction) with TorchEngine. With `checkpoint.every`, checkpoints
(twin/checkpoint.py) from which the same command resumes.

Same semantics as the JAX step: the framework-neutral numpy batches of data.py; the mean
next-token loss over microbatches; the global gradient norm before clipping; Optax's
clip_by_global_norm (scale by clip/norm when norm > clip, no epsilon) and adamw (bias-corrected
moments, eps outside the square root, decoupled decay lr * wd * p, masked as optim.decays says);
the learning rate of step t (1-based) is the Optax schedule at t - 1, evaluated by Optax itself.

Several devices: one process per device under torchrun (`torchrun --nproc_per_node=N -m jaxbench
train --config.framework=torch ...`): mesh.data -> DDP, mesh.fsdp -> FSDP2 (fully_shard), both ->
HSDP, mesh.tensor -> tensor parallelism beneath them (twin/parallelize.py); NCCL/RCCL on GPUs,
gloo on CPU. JAX is used only on the CPU, in this process, for the
initial weights, the learning-rate values and the measured CPU peak: it never touches a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib.util
import os
import sys
import time
from typing import Any

from jaxbench import compat
from jaxbench import config as config_lib
from jaxbench import data as data_lib
from jaxbench import harness
from jaxbench import hostalloc
from jaxbench.errors import ConfigError, Diverged
from jaxbench.twin import profiling as twin_profiling

# DDP for DTensor parameters (DistributedDataParallel takes none): torch's private module.
REPLICATE = "torch.distributed._composable.replicate_with_fsdp"

EXTRA_HINT = 'the PyTorch twin needs torch: pip install -e ".[torch]" (the `torch` extra)'


def cpu_only_jax():
  """JAX, confined to the CPU before any backend starts (it must not take GPU memory here)."""
  import jax
  if not compat.backends_started():
    jax.config.update("jax_platforms", "cpu")
  return jax


def import_torch():
  try:
    import torch
  except ImportError:
    raise ConfigError("framework", f"torch is not installed; {EXTRA_HINT}") from None
  return torch


# --- setup ----------------------------------------------------------------------------------------

@dataclasses.dataclass
class Setup:
  """Everything the loop needs, derived from the config before the first step."""
  config: Any
  device: Any
  rank: int
  world: int
  mesh_shape: dict
  parallel: str
  model_cfg: Any
  module: Any  # the bare Transformer (named parameters, state dict)
  model: Any  # what runs: DDP-wrapped, FSDP-sharded, tensor-parallel (twin/parallelize.py)
  loss_fn: Any  # tokens [b, S+1] -> mean loss (compiled with torch.compile)
  optimizer: Any
  params: list
  lr_values: list
  n_params: int
  param_counts: dict
  flops: dict
  info: dict  # run.json's torch entry
  placements: dict | None = None  # run.json's placements (twin/parallelize.describe)


def resolve_parallel(c, world: int, mesh_shape: dict) -> str:
  """torch.parallel against the mesh: none, ddp, fsdp (fsdp with mesh.data > 1 is HSDP); with
  mesh.tensor > 1: tensor (tensor parallelism alone), fsdp+tensor, ddp+tensor."""
  wanted = c.torch.parallel
  if world == 1:
    if wanted in ("ddp", "fsdp"):
      raise ConfigError("torch.parallel", f"{wanted} needs several processes: start the run with "
                                          "torchrun --nproc_per_node=N; allowed here: auto, none")
    return "none"
  if wanted == "none":
    raise ConfigError("torch.parallel", f"none, but torchrun started {world} processes; allowed: "
                                        "auto, ddp, fsdp")
  if wanted == "ddp" and mesh_shape["fsdp"] > 1:
    raise ConfigError("torch.parallel", f"ddp with mesh.fsdp={mesh_shape['fsdp']}; use fsdp, or "
                                        "mesh.fsdp=1")
  if wanted == "fsdp" and mesh_shape["fsdp"] == 1:
    raise ConfigError("mesh.fsdp", f"1 with torch.parallel=fsdp: set mesh.fsdp (e.g. -1) to the "
                                   f"processes to shard over (of {world})")
  data_parallel = wanted if wanted != "auto" else "fsdp" if mesh_shape["fsdp"] > 1 else "ddp"
  if mesh_shape["tensor"] == 1:
    return data_parallel
  if mesh_shape["tensor"] == world:
    return "tensor"
  if data_parallel == "ddp" and importlib.util.find_spec(REPLICATE) is None:
    import torch
    raise ConfigError("mesh.fsdp", f"1 with mesh.data={mesh_shape['data']} and mesh.tensor="
                      f"{mesh_shape['tensor']}: data parallelism beside tensor parallelism is "
                      f"FSDP2's replicate, which torch {torch.__version__} lacks ({REPLICATE}); "
                      "shard over fsdp instead (mesh.fsdp=-1 mesh.data=1)")
  return f"{data_parallel}+tensor"


def _world_size() -> int:
  """The process count torchrun started (1 without torchrun), read before any process group."""
  try:
    return int(os.environ.get("WORLD_SIZE", "1"))
  except ValueError:
    raise ConfigError("WORLD_SIZE", f"{os.environ['WORLD_SIZE']!r} is not a process "
                                    "count") from None


def _init_process_group(torch):
  """(rank, world, local_rank) from torchrun's environment; the group is started when world > 1."""
  world = int(os.environ.get("WORLD_SIZE", "1"))
  rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
  if world > 1 and not torch.distributed.is_initialized():
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
      torch.cuda.set_device(local_rank)
    torch.distributed.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=300))
  return rank, world, local_rank


def jax_initial_params(c):
  """The very params the JAX run of this config and seed starts from, as numpy (made on the CPU)."""
  jax = cpu_only_jax()
  from jaxbench import model as model_lib
  cfg = model_lib.ModelConfig.from_config(c, "xla")
  model = model_lib.Transformer(cfg)
  init = jax.jit(lambda key: model_lib.init_params(model, key, c.seq_len))
  return jax.device_get(init(jax.random.key(c.seed)))


def lr_values(c) -> list[float]:
  """The Optax schedule's learning rate before each optimizer step (index = steps done)."""
  jax = cpu_only_jax()
  from jaxbench import optim
  return [float(x) for x in jax.device_get(jax.vmap(optim.schedule(c))(jax.numpy.arange(c.steps)))]


def _sdpa_backend(torch, c, cfg, device, tensor: int = 1) -> dict:
  """The kernel F.scaled_dot_product_attention picks for this model's shapes and dtype (a
  process's heads: all of them, or its 1/tensor under tensor parallelism)."""
  from torch.nn.attention import SDPBackend
  names = {int(v): k for k, v in SDPBackend.__members__.items()}
  dtype = torch.bfloat16 if c.dtype == "bfloat16" else torch.float32
  heads, kv_heads = cfg.n_heads // tensor, cfg.n_kv_heads // tensor
  q = torch.zeros(1, heads, c.seq_len, cfg.head_dim, dtype=dtype, device=device)
  kv = torch.zeros(1, kv_heads, c.seq_len, cfg.head_dim, dtype=dtype, device=device)
  mask = None
  if cfg.position == "alibi":
    from jaxbench.twin import model as twin_model
    slopes = twin_model.alibi_slopes(cfg.n_heads)[:heads].to(device)
    mask = twin_model.alibi_mask(slopes, c.seq_len).to(dtype)
  try:
    choice = torch._fused_sdp_choice(q, kv, kv, mask, 0.0, mask is None, scale=None,
                                     enable_gqa=kv_heads != heads)
    backend = names.get(int(choice), str(choice))
  except Exception as e:  # a private API: say so rather than guess
    backend = f"unknown ({type(e).__name__}: {e})"
  return {"implementation": "sdpa", "backend": backend,
          "reason": "F.scaled_dot_product_attention's own choice for these shapes, dtype and "
                    f"device (model.attention={c.model.attention} chooses JAX's kernel)"}


def _optimizer(torch, c, module, device) -> tuple[Any, list, dict]:
  """AdamW with Optax's decay mask; fused where the device has the kernel, else foreach."""
  from jaxbench import optim
  from jaxbench.twin import convert
  o = c.optimizer
  decay, no_decay = [], []
  for name, p in module.named_parameters():
    (decay if optim.decays(convert.jax_name(name), o.decay_embeddings) else no_decay).append(p)
  groups = [{"params": decay, "weight_decay": o.weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]
  kwargs = dict(lr=0.0, betas=(o.b1, o.b2), eps=o.eps)
  note = None
  if c.torch.fused_adamw:
    try:
      optimizer = torch.optim.AdamW(groups, fused=True, **kwargs)
      return optimizer, decay + no_decay, {"adamw": "fused"}
    except (RuntimeError, ValueError) as e:
      note = f"fused AdamW unavailable here ({str(e).splitlines()[0][:200]}); foreach used"
  optimizer = torch.optim.AdamW(groups, foreach=True, **kwargs)
  return optimizer, decay + no_decay, {"adamw": "foreach", "adamw_note": note}


def build(c, device=None) -> Setup:
  """Config -> checks -> process group -> model (initial weights) -> parallelize -> optimizer."""
  torch = import_torch()
  from jaxbench import flops as flops_lib
  from jaxbench import model as model_lib
  from jaxbench.twin import convert
  from jaxbench.twin import model as twin_model
  from jaxbench.twin import parallelize as parallelize_lib

  # Bad input is exit 2 before any process group starts (a process that fails alone would leave
  # the others waiting in a collective).
  mesh_shape = config_lib.validate(c, _world_size())
  parallel = resolve_parallel(c, _world_size(), mesh_shape)
  rank, world, local_rank = _init_process_group(torch)
  if device is None:
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
  if c.memory_check:
    _check_state_fits(torch, c, mesh_shape, device)
  if c.model.attention == "cudnn" and device.type != "cuda":
    raise ConfigError("model.attention", f"cudnn needs a CUDA GPU, the twin runs on {device.type}; "
                                         "allowed here: auto, xla, jax")
  if device.type == "cuda":
    torch.set_float32_matmul_precision(c.torch.float32_matmul_precision)

  cfg = model_lib.ModelConfig.from_config(c, "xla")
  counts = model_lib.param_count(cfg)
  with torch.device("cpu"):
    module = twin_model.Transformer(cfg)
  if c.torch.init == "jax":
    state = convert.jax_to_torch(jax_initial_params(c), cfg)
    module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()}, strict=True)
  else:
    twin_model.init_weights(module, c.seed)
  n_params = sum(p.numel() for p in module.parameters())
  if n_params != counts["total"]:
    raise RuntimeError(f"the twin has {n_params:,} params, the analytic count is "
                       f"{counts['total']:,}: a bug in twin/model.py")
  module.to(device)

  model, mesh, plan = parallelize_lib.parallelize(module, c, mesh_shape, parallel, device)

  def loss_fn(tokens):
    loss = twin_model.cross_entropy(model(tokens[:, :-1]), tokens[:, 1:])
    # Under tensor parallelism, loss_parallel's replicated DTensor: the same value everywhere.
    return loss.to_local() if hasattr(loss, "to_local") else loss

  if c.torch.compile and parallel in ("none", "ddp"):  # else per block (parallelize)
    loss_fn = torch.compile(loss_fn)
  optimizer, params, adamw_info = _optimizer(torch, c, module, device)
  info = {
      "version": torch.__version__, "cuda": torch.version.cuda,
      "hip": getattr(torch.version, "hip", None),
      "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
      "device": str(device), "device_names": _device_names(torch, device, world),
      "num_threads": torch.get_num_threads(),
      "compile": ("torch.compile (inductor, per block under fsdp and tensor parallelism)"
                  if c.torch.compile else "eager"),
      "autocast": "bfloat16" if c.dtype == "bfloat16" else None,
      "float32_matmul_precision": torch.get_float32_matmul_precision(), "parallel": parallel,
      "init": ("converted from the JAX run's initial params (same seed)" if c.torch.init == "jax"
               else "native torch draws of the same distributions (not the JAX values)"),
      "remat": "none" if c.model.remat == "none" else
               f"full activation checkpointing per block (model.remat={c.model.remat})",
      **adamw_info,
  }
  return Setup(config=c, device=device, rank=rank, world=world, mesh_shape=mesh_shape,
               parallel=parallel, model_cfg=cfg, module=module, model=model, loss_fn=loss_fn,
               optimizer=optimizer, params=params, lr_values=lr_values(c), n_params=n_params,
               param_counts=counts, flops=flops_lib.flops_per_token(cfg, c.seq_len), info=info,
               placements=parallelize_lib.describe(module, plan, mesh) if world > 1 else None)


def _check_state_fits(torch, c, mesh_shape: dict, device) -> None:
  """ConfigError('memory_check') when the train state alone (float32 params, gradients and AdamW's
  two moments, per process as the mesh shards them: memory.predict's floor) is more than the GPU
  has, or on a CPU than the host has free for the run's processes on it, before any of it is made
  (the twin has no compiler's memory analysis to ask; the activations come on top)."""
  from jaxbench import memory as memory_lib
  from jaxbench import sysinfo
  floor = memory_lib.predict(c, mesh_shape)["floor_state"]
  if device.type == "cuda":
    copies, available, where = 1, torch.cuda.mem_get_info(device)[1], "the GPU"
  else:
    copies = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    available = sysinfo.host_memory_available()
    where = "this host" + (f" ({copies} processes' worth)" if copies > 1 else "")
  if available and floor * copies > available:
    gib = 2 ** 30
    raise ConfigError("memory_check", f"the train state alone needs {floor * copies / gib:.2f} GiB "
                      "(float32 params, gradients and AdamW's two moments) where "
                      f"{where} has {available / gib:.2f} GiB free; shard it over more processes "
                      "(mesh.fsdp) or take a smaller preset; --config.memory_check=False runs "
                      "it anyway")


def _device_names(torch, device, world: int) -> list[str]:
  if device.type == "cuda":
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
  from jaxbench import sysinfo
  return [sysinfo.cpu_model()]


# --- one step -------------------------------------------------------------------------------------

def _autocast(torch, s: Setup):
  return torch.autocast(s.device.type, dtype=torch.bfloat16, enabled=s.config.dtype == "bfloat16")


def _attention_context(torch, s: Setup):
  if s.config.model.attention != "cudnn":
    return contextlib.nullcontext()
  from torch.nn.attention import SDPBackend, sdpa_kernel
  return sdpa_kernel(SDPBackend.CUDNN_ATTENTION)


def _loss_context(s: Setup):
  """Under tensor parallelism the logits stay split by vocabulary into the cross-entropy
  (loss_parallel, forward and backward), as the JAX rules keep `activation_vocab` on `tensor`."""
  if s.mesh_shape["tensor"] == 1:
    return contextlib.nullcontext()
  from torch.distributed.tensor.parallel import loss_parallel
  return loss_parallel()


def _grad_sync(s: Setup, on: bool):
  """Gradient all-reduce only after the last microbatch."""
  if s.parallel == "ddp" and not on:
    return s.model.no_sync()
  if s.parallel in ("fsdp", "fsdp+tensor", "ddp+tensor"):
    s.module.set_requires_gradient_sync(on)
  return contextlib.nullcontext()


def train_step(s: Setup, batch, step_index: int):
  """One optimizer step on this process's rows; returns (loss, grad_norm) as device tensors.
  batch: int64 [microbatches, rows, seq_len + 1]."""
  import torch
  c = s.config
  for group in s.optimizer.param_groups:
    group["lr"] = s.lr_values[step_index]
  n_micro = batch.shape[0]
  total = torch.zeros((), device=s.device)
  for j in range(n_micro):
    with _grad_sync(s, j == n_micro - 1), _loss_context(s):
      with _autocast(torch, s), _attention_context(torch, s):
        loss = s.loss_fn(batch[j])
      (loss / n_micro).backward()
    total += loss.detach() / n_micro
  grads = [p.grad for p in s.params if p.grad is not None]
  norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
  if c.optimizer.clip_norm > 0:
    # Optax's clip_by_global_norm: scale by clip / norm only when norm exceeds clip, no epsilon.
    torch._foreach_mul_(grads, torch.clamp(c.optimizer.clip_norm / norm, max=1.0))
  s.optimizer.step()
  s.optimizer.zero_grad(set_to_none=True)
  if hasattr(norm, "full_tensor"):  # FSDP2: a replicated DTensor
    norm = norm.full_tensor()
  if s.world > 1:  # the mean over processes of their rows' mean loss: the global batch's mean
    torch.distributed.all_reduce(total)
    total = total / s.world
  return total, norm


def warm_up(s: Setup, batch) -> None:
  """Forward and backward of one microbatch, gradients dropped: torch.compile compiles both
  graphs here (and eager mode allocates), so that step 1 is an ordinary step. No weight changes."""
  import torch
  with _loss_context(s):
    with _autocast(torch, s), _attention_context(torch, s):
      loss = s.loss_fn(batch[0])
    loss.backward()
  s.optimizer.zero_grad(set_to_none=True)
  _synchronize(torch, s.device)


def evaluate(s: Setup, batches) -> float:
  """Mean held-out loss over the eval batches (step.make_eval_step's mean of microbatch means)."""
  import torch
  s.model.eval()
  totals = []
  with torch.no_grad(), _loss_context(s), _autocast(torch, s), _attention_context(torch, s):
    for batch in batches:
      totals.append(sum(s.loss_fn(b) for b in batch) / batch.shape[0])
  s.model.train()
  mean = torch.stack(totals).mean()
  if s.world > 1:
    torch.distributed.all_reduce(mean)
    mean = mean / s.world
  return float(mean)


def _synchronize(torch, device) -> None:
  if device.type == "cuda":
    torch.cuda.synchronize(device)


def local_rows(batch, rank: int, mesh_shape: dict):
  """This process's rows of a global batch [micro, batch, S+1]: the batch is split over data x
  fsdp (the JAX batch sharding's order: shard = data index * fsdp + fsdp index), and the tensor
  processes of one shard (neighbouring ranks, tensor innermost) hold the same rows."""
  shards = mesh_shape["data"] * mesh_shape["fsdp"]
  rows, shard = batch.shape[1] // shards, rank // mesh_shape["tensor"]
  return batch[:, shard * rows:(shard + 1) * rows]


# --- the run --------------------------------------------------------------------------------------

def _peak(torch, s: Setup):
  jax = cpu_only_jax()
  from jaxbench import peak as peak_lib
  c = s.config
  if c.peak_tflops:
    return peak_lib.resolve_peak(jax.devices("cpu")[:1], c.dtype, c.peak_tflops)
  if s.device.type == "cuda":
    kind = torch.cuda.get_device_name(s.device)
    peak = peak_lib.table_peak(kind, "gpu", c.dtype,
                               torch.cuda.get_device_properties(s.device).multi_processor_count)
    precision = torch.get_float32_matmul_precision()
    if peak.tflops and c.dtype == "float32" and precision != "high":
      return peak_lib.Peak(None, "unknown", f"{kind}: torch float32_matmul_precision={precision} "
                           "(highest: no TF32; medium: bf16 passes); the float32 table peak "
                           "assumes TF32: set --config.peak_tflops")
    return peak
  # CPU: the same measured (cached) XLA matmul peak as the JAX run's, per device; unknown where
  # several of the run's processes share this host's cores (peak.resolve_peak).
  return peak_lib.resolve_peak(jax.devices("cpu")[:1], c.dtype, 0.0,
                               host_processes=_processes_on_this_host(torch, s))


def _processes_on_this_host(torch, s: Setup) -> int:
  """The run's processes on this machine (distributed.processes_on_this_host's count)."""
  if s.world == 1:
    return 1
  from jaxbench import sysinfo
  mine = sysinfo.machine_identity()
  every = [None] * s.world
  torch.distributed.all_gather_object(every, mine)
  return every.count(mine)


def _peak_memory(torch, device) -> tuple[int | None, str]:
  if device.type == "cuda":
    return int(torch.cuda.max_memory_allocated(device)), "torch.cuda.max_memory_allocated"
  import resource
  return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
          "process peak RSS (the device's memory and everything else the process holds)")


def _backend(torch, s: Setup) -> dict:
  from jaxbench import sysinfo
  cuda = s.device.type == "cuda"
  hip = getattr(torch.version, "hip", None)
  version = (f"HIP {hip}" if hip else f"CUDA {torch.version.cuda}") if cuda else None
  return {"backend": "gpu" if cuda else "cpu", "platform": ("rocm" if hip else "cuda") if cuda else "cpu",
          "platform_version": version, "driver": sysinfo.driver(),
          "device_kind": torch.cuda.get_device_name(s.device) if cuda else "cpu",
          "n_devices": s.world, "n_local_devices": int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
          "process_count": s.world, "process_index": s.rank}


def run(c, workdir: str | None = None) -> dict:
  """Trains per config `c` with the twin; returns summary.json's contents. ConfigError before
  anything runs on bad input, Diverged on a non-finite loss."""
  cpu_only_jax()
  train_data = data_lib.make(c, "train")  # bad data fails here, before anything is written
  eval_data = data_lib.make(c, "val") if c.eval.every else None
  s = build(c)
  return harness.run(TorchEngine(s, import_torch()), workdir, train_data, eval_data)


class TorchEngine:
  """What the twin brings to the harness (harness.py, the JAX run's rules): eager or compiled
  modules whose state lives in place, one process per device. A step is dispatched and then read
  (its loss and norm, the device synchronized); on a CPU the dispatch runs it to its end."""
  banner = "jaxbench (torch twin)"
  framework = "torch"
  queue_ahead = False  # the next step's weights are this step's: nothing to queue ahead
  transfer_ahead = True  # the prefetcher makes each batch this process's tensor on its device

  def __init__(self, s: Setup, torch):
    self.s, self.torch, self.config = s, torch, s.config
    self.is_writer, self.n_devices = s.rank == 0, s.world
    self.runs_inline = s.device.type != "cuda"
    self.backend = _backend(torch, s)
    self.first_step = 1  # of this start: its collectives are counted (several processes)
    self.run_info, self.out = None, None

  def any_process(self, flag: bool) -> bool:
    if self.s.world == 1:
      return flag
    # On the run's device: NCCL, the GPU backend, reduces no host tensor.
    t = self.torch.tensor([1.0 if flag else 0.0], device=self.s.device)
    self.torch.distributed.all_reduce(t)
    return bool(t.item() > 0)

  def from_process_0(self, value: int) -> int:
    shared = [value]
    if self.s.world > 1:
      self.torch.distributed.broadcast_object_list(shared, src=0)
    return shared[0]

  def workdir_label(self) -> str:
    return f"torch-{self.backend['platform']}"

  def describe(self, workdir: str, train_data, say) -> tuple[dict, Any]:
    self.run_info, peak = _describe(self, workdir, train_data, say)
    return self.run_info, peak

  def checkpointer(self, workdir: str):
    from jaxbench.twin import checkpoint as twin_checkpoint
    c = self.config
    return twin_checkpoint.TwinCheckpointer(workdir, c.checkpoint.every, c.checkpoint.keep,
                                            self.s.rank, self.s.world)

  def prepare(self, p, run_info: dict, say, restore, start_step: int, train_data) -> Setup:
    """The state restored (ConfigError when corrupt), then the warm-up: torch.compile's
    compilation (or eager mode's first allocations), timed apart as compile_s."""
    s, c = self.s, self.config
    if restore is not None:
      p.status, p.phase = "restoring", "init"
      restore.restore(start_step, s.module, s.optimizer)
    p.status = "compiling" if c.torch.compile else "warming up"
    p.phase = "compile" if c.torch.compile else "init"
    batch = self.put(train_data.batch(start_step))
    say("  compiling (torch.compile) ..." if c.torch.compile else "  warming up (eager) ...",
        flush=True)
    t0 = time.perf_counter()
    warm_up(s, batch)
    p.compile_s = time.perf_counter() - t0
    run_info["compile"] = {"compile_s": p.compile_s, "mode": s.info["compile"],
                           "what": "one forward and backward of the first microbatch, gradients "
                                   "dropped (torch.compile compiles both graphs here)",
                           "model_flops_per_step": (s.flops["flops_per_token"] * c.batch_size
                                                    * c.seq_len)}
    say(f"  warm-up done in {p.compile_s:.1f}s", flush=True)
    self.first_step = start_step + 1
    return s  # the modules and the optimizer hold the state

  def begun(self, out, run_info: dict) -> None:
    self.out = out

  def put(self, batch):
    s = self.s
    return self.torch.from_numpy(local_rows(batch, s.rank, s.mesh_shape)).to(s.device,
                                                                              self.torch.long)

  def dispatch(self, state: Setup, batch, step: int):
    counting = step == self.first_step and state.world > 1  # the first step of each start
    with _collectives_counted(state, self.run_info, step, on=counting):
      loss, norm = train_step(state, batch, step - 1)
    return state, (loss, norm, step, counting)

  def read(self, outputs) -> dict:
    loss, norm, step, counting = outputs
    metrics = {"loss": float(loss), "grad_norm": float(norm),  # waits for the loss and norm
               "lr": self.s.lr_values[step - 1]}
    _synchronize(self.torch, self.s.device)  # and for the optimizer's update
    if counting:
      self.out.write("run.json", self.run_info)
      metrics["notes"] = {"collectives_counted": True}
    return metrics

  def evaluator(self, eval_data):
    batches = [self.put(eval_data.batch(j)) for j in range(self.config.eval.batches)]
    return lambda state: evaluate(state, batches)

  def save(self, checkpointer, step: int, state: Setup, config_dict: dict) -> None:
    checkpointer.save(step, state.module, state.optimizer, config_dict)

  def trace(self, workdir: str, steps):
    s = self.s
    return twin_profiling.TorchStepTrace(self.torch, workdir, steps, s.rank, s.world,
                                         cuda=s.device.type == "cuda")

  def finish(self, state) -> None:
    pass  # each step was read, the device synchronized

  def summary_facts(self) -> dict:
    return {"peak_memory": _peak_memory(self.torch, self.s.device),
            "backend": self.backend["backend"], "device_kind": self.backend["device_kind"]}


def _describe(engine: TorchEngine, workdir: str, train_data, say) -> tuple[dict, Any]:
  """Prints the run's header; returns (run.json's contents, the peak for MFU)."""
  from jaxbench import sysinfo
  s, c, torch, backend = engine.s, engine.config, engine.torch, engine.backend
  m, flops = c.model, s.flops
  say(f"jaxbench (torch twin): {c.family}:{c.preset}  d_model={m.d_model} n_layers={m.n_layers} "
      f"n_heads={m.n_heads} n_kv_heads={m.n_kv_heads} d_ff={m.d_ff} vocab={m.vocab_size} "
      f"seq_len={c.seq_len}")
  say(f"  params {s.n_params:,} ({s.n_params / 1e6:.1f}M)  FLOPs/token "
      f"{flops['flops_per_token']:,} ({flops['formula']})")
  if note := data_lib.vocab_note(c, train_data):
    say(f"  {note}")
  say(f"  {s.world} x {backend['device_kind']} ({s.device.type}), torch {torch.__version__}, "
      f"parallel {s.parallel}, dtype {c.dtype}, {s.info['compile']}, AdamW {s.info['adamw']}")
  attention = _sdpa_backend(torch, c, s.model_cfg, s.device, s.mesh_shape["tensor"])
  say(f"  attention: SDPA, backend {attention['backend']}; initial weights: {s.info['init']}")
  peak = _peak(torch, s)
  peak_text = f"{peak.tflops:.4g} TFLOP/s" if peak.tflops is not None else "unknown"
  say(f"  peak per device: {peak_text} ({peak.source}: {peak.detail})")
  say(f"  run directory: {os.path.abspath(workdir)}", flush=True)
  versions = sysinfo.versions()
  versions["torch"] = torch.__version__
  run_info = {
      "config": c.to_dict(), "framework": "torch", "started_at": sysinfo.now_iso(),
      "versions": versions, **backend,
      "distributed": f"torchrun: {s.world} processes" if s.world > 1 else "single process",
      "mesh": s.mesh_shape, "torch": s.info, "placements": s.placements, "attention": attention,
      "n_params": s.n_params, "param_counts": s.param_counts, **flops,
      "peak": dataclasses.asdict(peak),
      "mfu_note": None if peak.tflops else "no peak known for this device: " + peak.detail,
      "env": sysinfo.relevant_env(), "git": sysinfo.git_commit(), "host": sysinfo.host(),
      "deterministic": {"requested": bool(c.deterministic),
                        "note": "the twin does not set torch's deterministic algorithms"},
      "host_allocator": hostalloc.describe(c.host_allocator),
  }
  return run_info, peak


@contextlib.contextmanager
def _collectives_counted(s: Setup, run_info: dict, step: int, on: bool):
  """With `on`, the collectives this step issues (twin/collectives.py), process 0's into run.json's
  `collectives`: what `jaxbench compare` sets beside XLA's (its compile.collectives). Every
  process counts, so that all run the same program (torch.compile's frames step aside for a
  dispatch mode: counting on one process alone had it issue other collectives than the rest, and
  the run hung). The counting mode slows the step: it is left out of the timing."""
  if not on:
    yield
    return
  from jaxbench.twin import collectives as collectives_lib
  with collectives_lib.CollectiveCounter() as counter:
    yield
  run_info["collectives"] = {
      "per_device": collectives_lib.summarize(counter.calls), "step": step,
      "source": "the collective calls process 0 issued in this step (a TorchDispatchMode "
                "counting DTensor's, FSDP2's and DDP's calls), bytes of each call's result"}


# --- command line (reached through jaxbench train's main) -----------------------------------------

def main(c, workdir: str | None, cluster_flags=(None, None, None)) -> int:
  """`jaxbench train` with framework=torch: exit codes of the contract."""
  try:
    if any(v is not None for v in cluster_flags):
      raise ConfigError("--coordinator_address", "the torch twin takes its processes from torchrun "
                                                 "(torchrun --nproc_per_node=N -m jaxbench train ...)")
    run(c, workdir)
  except ConfigError as e:
    print(f"jaxbench train: bad input: {e}", file=sys.stderr)
    return 2
  except Diverged as e:
    print(f"jaxbench train: {e}", file=sys.stderr)
    return 3
  finally:
    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
      torch.distributed.destroy_process_group()
  return 0
