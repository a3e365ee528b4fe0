"""Sharding rules, in one place: logical axis names -> mesh axes (MaxText style).

The model names the axes of every parameter and of the activations it constrains (`embed`, `mlp`,
`activation_batch`, ...). This table maps them onto the mesh axes `data`, `fsdp` and `tensor`.
Changing the parallelism of a run changes the mesh, never the model.

Sharding model: the mesh axes are `Auto` (GSPMD propagates shardings from the annotated inputs,
outputs and constraints). Recent JAX defaults `jax.make_mesh` to `Explicit` axes (sharding in
types); we ask for `Auto` explicitly so the same code means the same thing on every JAX we support.
"""

from __future__ import annotations

import contextlib
import threading

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical axis -> mesh axis (or axes, or None: replicated).
LOGICAL_AXIS_RULES = (
    # Parameters.
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("position", None),
    ("layers", None),
    # Activations.
    ("activation_batch", BATCH_AXES),
    ("activation_length", None),
    ("activation_embed", None),
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
)


def make_mesh(shape: dict[str, int], devices=None) -> Mesh:
  """A mesh with axes (data, fsdp, tensor) over all devices of all processes.

  jax.make_mesh orders devices so the innermost axis (tensor) stays within a host's fast links."""
  sizes = tuple(shape[a] for a in MESH_AXES)
  kwargs = {"devices": devices} if devices is not None else {}
  axis_type = getattr(jax.sharding, "AxisType", None)
  if axis_type is not None:
    kwargs["axis_types"] = (axis_type.Auto,) * len(sizes)
  return jax.make_mesh(sizes, MESH_AXES, **kwargs)


def tensor_groups_within_hosts(mesh: Mesh) -> bool:
  """True when every tensor-parallel group lies on one host (process): the fast links carry the
  tensor axis's per-layer collectives, and only data / fsdp traffic crosses hosts. jax.make_mesh
  orders devices host by host with `tensor` innermost, so this holds when tensor divides the
  devices per host."""
  groups = mesh.devices.reshape(-1, mesh.shape["tensor"])
  return all(len({d.process_index for d in group}) == 1 for group in groups)


def logical_to_spec(logical_axes) -> P:
  """PartitionSpec of mesh axes for a tuple of logical axis names."""
  return nn.logical_to_mesh_axes(logical_axes, LOGICAL_AXIS_RULES)


def param_shardings(boxed_tree, mesh: Mesh):
  """NamedShardings for a tree of (abstract) params boxed with logical axis names."""
  specs = nn.get_partition_spec(boxed_tree)
  return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_AXIS_RULES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Token batches are [microbatches, batch // microbatches, seq_len + 1], batch over data x fsdp."""
  return NamedSharding(mesh, P(None, BATCH_AXES, None))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


# The mesh that `constrain` uses while a step is traced; None outside (then it does nothing).
_context = threading.local()


@contextlib.contextmanager
def activation_mesh(mesh: Mesh | None):
  """Within this block, `constrain` pins activations to `mesh` by the rules above."""
  previous = getattr(_context, "mesh", None)
  _context.mesh = mesh
  try:
    yield
  finally:
    _context.mesh = previous


def constrain(x, logical_axes):
  """Sharding constraint on an activation, by logical axis names; a no-op without a mesh.

  (flax's own with_logical_constraint skips constraints on CPU, which would leave the CPU mesh
  tests without the constraints that run on GPUs, so jaxbench applies its own.)"""
  mesh = getattr(_context, "mesh", None)
  if mesh is None or mesh.size == 1:
    return x
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, logical_to_spec(logical_axes)))


def per_shard(f, in_axes: list, out_axes):
  """f run by each device on its own shards (shard_map), its arguments and result sharded by
  these logical axes: for a kernel XLA's SPMD partitioner cannot split (a Pallas call is one
  opaque custom call, which it would otherwise run whole, its inputs gathered). f itself as it is
  without a mesh."""
  mesh = getattr(_context, "mesh", None)
  if mesh is None or mesh.size == 1:
    return f
  return jax.shard_map(f, mesh=mesh, in_specs=tuple(logical_to_spec(a) for a in in_axes),
                       out_specs=logical_to_spec(out_axes), check_vma=False)


def describe_param_specs(shardings) -> dict[str, str]:
  """{'path/to/param': 'PartitionSpec(...)'} for run.json."""
  flat = jax.tree_util.tree_flatten_with_path(shardings)[0]
  return {"/".join(_key_name(k) for k in path): str(s.spec) for path, s in flat}


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)

