"""The twin's parallelize step (torchtitan's seam): a plain twin Transformer in, the parallel model
out, in a fixed order: tensor parallelism (DTensor placements), torch.compile per block, then
data parallelism (FSDP2 / HSDP / DDP). twin/model.py knows nothing of any of it.

The mesh is jaxbench's: (data, fsdp, tensor), one torchrun process per device, `tensor` innermost
(rank = (data index * fsdp + fsdp index) * tensor + tensor index), so the tensor groups are
neighbouring ranks as jax.make_mesh keeps them on one host.

Tensor parallelism splits what jaxbench/sharding.py's rules split over `tensor`, the same way
(TENSOR_PLAN below, beside each rule it mirrors): heads, kv heads, MLP and vocab. Megatron's
column-wise / row-wise pairs: q/k/v and MLP up/gate split their outputs (Shard(0) of torch's
[out, in] weights), the attention output and MLP down projections their inputs (Shard(1)), whose
partial sums one all-reduce adds; the embedding is vocab-parallel (rows split, a masked lookup,
one all-reduce), and the output layer splits the vocabulary, its logits staying split into the
loss (torch's loss_parallel: the softmax's max and sum are all-reduced, never the logits).
Everything else (norms, the position table: the rules' `norm` and `position`) is replicated.

As in the JAX rules, the activations between blocks are whole on every tensor process (no
sequence parallelism): the residual stream is a replicated DTensor, and so is every parameter
(Replicate where the rules say None), so that all live on the one mesh (the gradient norm, AdamW
and FSDP2 take them together) and torch.compile'd blocks take and return DTensors, as
torchtitan's do (with the activations plain between layers, torch.compile'd blocks failed in
the backward). In the backward, the column-wise layers leave their inputs' gradients as partial
sums; each norm's output is entered through a plain tensor, so that they are all-reduced there,
once for q, k and v together (and once for gate and up), not once per layer (left to DTensor,
the partial sums reached ops that redistributed them by all-gathers and reduce-scatters: more
bytes). run.json's `collectives` lists what a step issued.

FSDP2 then shards every parameter's dim 0 over `fsdp` (the JAX rules shard `embed` instead: the
same bytes per device) and replicates over `data`; with tensor parallelism and no fsdp, data
parallelism is FSDP2's `replicate` (DDP on the same mesh: DistributedDataParallel takes no
DTensor parameters).
"""

from __future__ import annotations

import fnmatch

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_module
from torch.distributed.tensor.parallel import (ColwiseParallel, ParallelStyle, RowwiseParallel,
                                               parallelize_module)

MESH_AXES = ("data", "fsdp", "tensor")

# torch module (fnmatch pattern) -> (its tensor-parallel style, jaxbench/sharding.py's rule).
TENSOR_PLAN = (
    ("embedding", "vocab_embedding", "vocab -> tensor (embedding [vocab, embed])"),
    ("position_embedding", "replicate", "position -> None"),
    ("layers.*.attention_norm", "replicate", "norm -> None"),
    ("layers.*.attention.query", "colwise", "heads -> tensor"),
    ("layers.*.attention.key", "colwise", "kv_heads -> tensor"),
    ("layers.*.attention.value", "colwise", "kv_heads -> tensor"),
    ("layers.*.attention.out", "rowwise", "heads -> tensor (out [heads, head_dim, embed])"),
    ("layers.*.mlp_norm", "replicate", "norm -> None"),
    ("layers.*.mlp.gate", "colwise", "mlp -> tensor"),
    ("layers.*.mlp.up", "colwise", "mlp -> tensor"),
    ("layers.*.mlp.down", "rowwise", "mlp -> tensor (down [mlp, embed])"),
    ("final_norm", "replicate", "norm -> None"),
    ("lm_head", "vocab_head", "vocab -> tensor (lm_head [embed, vocab]; logits stay split)"),
)

# What each style does, for run.json and the README.
STYLES = {
    "colwise": "ColwiseParallel: weight [out, in] Shard(0), bias Shard(0); input replicated, "
               "output this process's heads / MLP columns (plain tensors)",
    "rowwise": "RowwiseParallel: weight Shard(1), bias Replicate; input this process's heads / "
               "MLP columns, partial sums all-reduced into the replicated output",
    "vocab_embedding": "RowwiseParallel: weight Shard(0) (vocab rows); each process looks up the "
                       "tokens in its rows (the rest masked), one all-reduce",
    "vocab_head": "weight Shard(0) by vocab (tied: the embedding's own); logits Shard(-1) into "
                  "loss_parallel's cross-entropy",
    "replicate": "every parameter Replicate; input and output the replicated residual stream",
}


def world_mesh(device_type: str, mesh_shape: dict):
  """The (data, fsdp, tensor) DeviceMesh over every process (tensor innermost)."""
  from torch.distributed.device_mesh import init_device_mesh
  return init_device_mesh(device_type, tuple(mesh_shape[a] for a in MESH_AXES),
                          mesh_dim_names=MESH_AXES)


def _style(name: str) -> ParallelStyle:
  """The ParallelStyle of a TENSOR_PLAN style name. Between blocks the residual stream is a
  replicated DTensor (torchtitan's blocks take and return DTensors too, sequence-split there):
  only the heads and MLP columns inside a block are plain local tensors."""
  if name == "colwise":
    return ColwiseParallel(input_layouts=Replicate())
  if name == "rowwise":
    return RowwiseParallel(output_layouts=Replicate(), use_local_output=False)
  if name == "vocab_embedding":
    return VocabEmbedding(input_layouts=Replicate(), output_layouts=Replicate())
  if name == "vocab_head":
    return ColwiseParallel(input_layouts=Replicate(), output_layouts=Shard(-1),
                           use_local_output=False)
  return Replicated()


class VocabEmbedding(RowwiseParallel):
  """RowwiseParallel on the embedding (its vocab rows split; a masked lookup, one all-reduce),
  its output the residual stream's replicated DTensor, entered through a plain tensor: a partial
  gradient coming back (none does, as the norms reduce theirs) would be all-reduced here, which
  the masked lookup's backward cannot do itself."""

  def _apply(self, module, mesh):
    module = super()._apply(module, mesh)
    module.register_forward_hook(
        lambda _, args, out: DTensor.from_local(out, mesh, [Replicate()], run_check=False))
    return module


class Replicated(ParallelStyle):
  """A module whose parameters every tensor process holds whole: Replicate DTensors (the local
  values as they are, no broadcast); a plain tensor input is taken as replicated; the output a
  replicated DTensor, as the residual stream is, whose gradient is all-reduced here."""

  def _apply(self, module, mesh):
    def partition(name, submodule, mesh):
      for key, p in list(submodule.named_parameters(recurse=False)):
        replicated = DTensor.from_local(p.data, mesh, [Replicate()], run_check=False)
        submodule.register_parameter(key, nn.Parameter(replicated, p.requires_grad))

    def inputs(submodule, args, mesh):
      return tuple(DTensor.from_local(a, mesh, [Replicate()], run_check=False)
                   if _plain_tensor(a) else a for a in args)

    def output(submodule, out, mesh):
      # Through a plain tensor, so that the gradients coming back (partial sums: the column-wise
      # layers that read this output leave them so) are all-reduced here, once for all of them.
      return DTensor.from_local(out.to_local(), mesh, [Replicate()], run_check=False)

    return distribute_module(module, mesh, partition, inputs, output)


def _plain_tensor(x) -> bool:
  return isinstance(x, torch.Tensor) and not isinstance(x, DTensor)


def tensor_plan(module) -> dict:
  """{pattern: style name} of TENSOR_PLAN's entries this model has (MPT has no gate and, tied,
  no lm_head: its head is the embedding's weight, split by vocab with it)."""
  names = [n for n, _ in module.named_modules() if n]
  return {pattern: style for pattern, style, _ in TENSOR_PLAN
          if fnmatch.filter(names, pattern)}


def apply_tensor_parallel(module, tp_mesh) -> dict:
  """Splits `module` over the 1-D `tp_mesh` in place by TENSOR_PLAN; returns the plan applied.
  Every process holds the same full weights already (the JAX run's, converted): each keeps its
  own shard of them, nothing is sent (src_data_rank=None)."""
  plan = tensor_plan(module)
  parallelize_module(module, tp_mesh, {pattern: _style(style) for pattern, style in plan.items()},
                     src_data_rank=None)
  if getattr(module, "alibi_slopes", None) is not None:  # this process's heads' slopes
    index, size = tp_mesh.get_local_rank(), tp_mesh.size()
    module.alibi_slopes = module.alibi_slopes.chunk(size)[index].clone()
  return plan


def parallelize(module, c, mesh_shape: dict, parallel: str, device):
  """The model that runs: `module` with tensor parallelism (mesh.tensor > 1), compile and data
  parallelism applied per `parallel` (train.resolve_parallel's). Returns (model, world mesh or
  None, the tensor plan applied)."""
  world = mesh_shape["data"] * mesh_shape["fsdp"] * mesh_shape["tensor"]
  if world == 1:
    return module, None, {}
  if parallel == "ddp":  # DistributedDataParallel, as before tensor parallelism came
    from torch.nn.parallel import DistributedDataParallel
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids), None, {}
  mesh = world_mesh(device.type, mesh_shape)
  plan = {}
  if mesh_shape["tensor"] > 1:
    plan = apply_tensor_parallel(module, mesh["tensor"])
  if c.torch.compile:
    for layer in module.layers:
      layer.compile()
  if parallel in ("fsdp", "fsdp+tensor"):
    from torch.distributed.fsdp import fully_shard
    dp_mesh = mesh["data", "fsdp"] if mesh_shape["data"] > 1 else mesh["fsdp"]
    for layer in module.layers:
      fully_shard(layer, mesh=dp_mesh)
    fully_shard(module, mesh=dp_mesh)
  elif parallel == "ddp+tensor":  # a private module (train.REPLICATE), checked before
    from torch.distributed._composable.replicate_with_fsdp import replicate
    for layer in module.layers:
      replicate(layer, mesh=mesh["data"])
    replicate(module, mesh=mesh["data"])
  return module, mesh, plan


def describe(module, plan: dict, mesh) -> dict:
  """run.json's `placements`: the mesh, the tensor plan (pattern -> style, and the JAX rule it
  mirrors), what each style does, and every parameter's placements by mesh dimension."""
  rules = {pattern: rule for pattern, _, rule in TENSOR_PLAN}
  params = {}
  for name, p in module.named_parameters():
    if isinstance(p, DTensor):
      params[name] = ", ".join(f"{dim}: {placement!r}" for dim, placement in
                               zip(p.device_mesh.mesh_dim_names or (), p.placements))
    else:
      params[name] = "whole on every process (a plain tensor)"
  described = {
      "mesh": None if mesh is None else dict(zip(mesh.mesh_dim_names, mesh.shape)),
      "tensor_plan": {pattern: {"style": style, "mirrors": rules[pattern]}
                      for pattern, style in plan.items()},
      "styles": {style: STYLES[style] for style in sorted(set(plan.values()))},
      "params": params,
  }
  if plan and "lm_head" not in plan:
    described["tensor_plan"]["(tied head)"] = {
        "style": "vocab_head", "mirrors": "vocab -> tensor (the embedding's weight, transposed)"}
    described["styles"]["vocab_head"] = STYLES["vocab_head"]
  return described
