"""What the twin's step communicates, counted as it runs: every collective call it issues (DTensor's
functional collectives, FSDP2's and DDP's process-group calls), by kind, with the bytes each
moves, in the units of jaxbench/hlo.py's count of the JAX step's (XLA's, read from its HLO): the
size of each call's result (for all-gather the gathered array, for reduce-scatter the scattered
shard), per process (device). `jaxbench compare` sets the two side by side.

Counted with a TorchDispatchMode, as torch's own CommDebugMode counts DTensor's: the mode steps
aside for DTensor arguments (NotImplemented), so that DTensor runs first and the collectives it
issues on the local shards, inside its ops (loss_parallel's, a redistribution's), reach the mode
too. The mode costs Python on every op: the step it counts is left out of the timing.
"""

from __future__ import annotations

import torch
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode

from jaxbench import hlo

# op name (without namespace and the trailing `_` of an in-place op) -> hlo.COLLECTIVES' kind.
_KINDS = {
    "all_reduce": "all-reduce", "allreduce": "all-reduce", "allreduce_coalesced": "all-reduce",
    "all_reduce_coalesced": "all-reduce",
    "all_gather_into_tensor": "all-gather", "_allgather_base": "all-gather",
    "allgather": "all-gather", "allgather_coalesced": "all-gather",
    "allgather_into_tensor_coalesced": "all-gather",
    "all_gather_into_tensor_coalesced": "all-gather",
    "reduce_scatter_tensor": "reduce-scatter", "_reduce_scatter_base": "reduce-scatter",
    "reduce_scatter": "reduce-scatter", "reduce_scatter_tensor_coalesced": "reduce-scatter",
    "all_to_all_single": "all-to-all", "alltoall": "all-to-all", "alltoall_base": "all-to-all",
    "send": "collective-permute", "recv": "collective-permute",
    "broadcast": "broadcast", "reduce": "reduce", "gather": "gather", "scatter": "scatter",
}
KINDS = (*hlo.COLLECTIVES, "broadcast", "reduce", "gather", "scatter")
_NAMESPACES = ("_c10d_functional", "c10d_functional", "c10d")


def kind_of(func) -> str | None:
  """hlo.COLLECTIVES' name (or broadcast, reduce, gather, scatter) of a c10d op; None for any
  other op (a wait, a barrier, computation)."""
  namespace, _, name = func._schema.name.partition("::")
  if namespace not in _NAMESPACES:
    return None
  return _KINDS.get(name) or _KINDS.get(name.rstrip("_"))


def _bytes(tree) -> int:
  leaves = torch.utils._pytree.tree_leaves(tree)
  return sum(t.numel() * t.element_size() for t in leaves if isinstance(t, torch.Tensor))


def result_bytes(func, args, out) -> int:
  """The bytes of a call's result: a functional collective's return value; an in-place
  process-group call's first argument (the output it fills: the gathered array, the scattered
  shard, the reduced tensors)."""
  if func._schema.name.startswith("c10d::"):
    return _bytes(args[0])
  return _bytes(out)


class CollectiveCounter(TorchDispatchMode):
  """Within `with CollectiveCounter() as counter:`, counter.calls lists (kind, bytes) of every
  collective this process issued, in order."""

  def __init__(self):
    super().__init__()
    self.calls: list[tuple[str, int]] = []

  def __torch_dispatch__(self, func, types, args=(), kwargs=None):
    if any(issubclass(t, DTensor) for t in types):
      return NotImplemented  # DTensor first: its collectives come back here on local tensors
    out = func(*args, **(kwargs or {}))
    kind = kind_of(func)
    if kind is not None:
      self.calls.append((kind, result_bytes(func, args, out)))
    return out


def summarize(calls) -> dict[str, dict[str, int]]:
  """{kind: {"count": n, "bytes": b}} for every kind, zeros included: hlo.collectives' layout."""
  out = {kind: {"count": 0, "bytes": 0} for kind in KINDS}
  for kind, size in calls:
    out[kind]["count"] += 1
    out[kind]["bytes"] += size
  return out
