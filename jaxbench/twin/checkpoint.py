"""The twin's checkpoints: its whole train state (parameters and AdamW state, of one process, DDP
or FSDP2 alike) with torch.distributed.checkpoint (DCP) in <run dir>/checkpoints/<step>, and the
step and config as JSON beside it; the layout of jaxbench/checkpoint.py's Orbax checkpoints, which
JAX runs write (run.json's `framework` tells the two apart; neither reads the other's).

Every process writes its part into <step>.tmp; once all have, process 0 adds the JSON and renames
the folder to <step>, so a process killed mid-save leaves the previous checkpoint as the latest
complete one (a folder named by its step alone is complete). DCP reshards on load: a run saved
under FSDP over 4 processes resumes on 2, or on one. The folder must be one every process sees.

The JSON holds a digest of every tensor of the state, the JAX checkpoints' (checkpoint.DIGEST:
sums of the 32-bit words and of their squares, modulo 2**32, so the same whatever the sharding),
made when the checkpoint is saved and checked after every restore: a corrupt checkpoint is exit 2
naming it, not a resumed run on other weights.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import warnings

from jaxbench.errors import ConfigError, first_line

META = "jaxbench_meta.json"
DIGEST = "u32-sum-sumsq-v1"  # as jaxbench/checkpoint.py's


def _tensors(state, prefix: str = ""):
  """(path, tensor) of every tensor in a nested state dict, in a fixed order."""
  import torch
  if isinstance(state, dict):
    for key in sorted(state, key=str):
      yield from _tensors(state[key], f"{prefix}/{key}")
  elif isinstance(state, (list, tuple)):
    for i, item in enumerate(state):
      yield from _tensors(item, f"{prefix}/{i}")
  elif isinstance(state, torch.Tensor):
    yield prefix, state


def _local_share(t):
  """(this process's part of tensor `t`, whether it counts it): a DTensor's local shard, counted by
  the processes at coordinate 0 of the mesh dimensions it is replicated over; a plain tensor (one
  process, or DDP's replicas) by process 0 alone."""
  import torch
  from torch.distributed.tensor import DTensor, Replicate
  if isinstance(t, DTensor):
    coordinate = t.device_mesh.get_coordinate()
    counts = coordinate is not None and all(
        c == 0 for c, placement in zip(coordinate, t.placements) if isinstance(placement, Replicate))
    return t.to_local(), counts
  rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
  return t, rank == 0


def state_digest(state, device, world: int) -> dict:
  """{tensor path: "sum:sumsq" in hex} of a (sharded) state dict, the same for every process and
  every layout of the same values; one all-reduce over the processes."""
  import torch
  paths, rows = [], []
  for path, t in _tensors(state):
    local, counts = _local_share(t)
    local = local.detach().contiguous().reshape(-1)
    size = local.element_size()
    if local.dtype == torch.bool:
      words = local.to(torch.int64)
    elif size == 8:
      words = local.view(torch.int32).to(torch.int64)
    else:
      words = local.view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[size]).to(torch.int64)
    if size == 2:
      words = words & 0xFFFF
    # int64 sums wrap modulo 2**64; kept modulo 2**32 they are the uint32 sums JAX's digest takes.
    row = torch.stack([words.sum(), (words * words).sum()]) if counts else torch.zeros(
        2, dtype=torch.int64, device=local.device)
    paths.append(path)
    rows.append(row.to(device))
  table = torch.stack(rows) if rows else torch.zeros(0, 2, dtype=torch.int64, device=device)
  if world > 1:
    torch.distributed.all_reduce(table)
  table = (table & 0xFFFFFFFF).cpu().tolist()
  return {path: f"{a:08x}:{b:08x}" for path, (a, b) in zip(paths, table)}


class TwinCheckpointer:

  def __init__(self, run_dir: str, every: int, keep: int, rank: int, world: int):
    self.every, self.keep, self.rank, self.world = every, keep, rank, world
    self.directory = os.path.abspath(os.path.join(run_dir, "checkpoints"))

  @property
  def enabled(self) -> bool:
    return self.every > 0

  def due(self, step: int) -> bool:
    return self.enabled and step % self.every == 0

  def steps(self) -> list[int]:
    try:
      return sorted(int(n) for n in os.listdir(self.directory) if n.isdigit())
    except OSError:
      return []

  def latest_step(self) -> int | None:
    steps = self.steps()
    return steps[-1] if steps else None

  def complete_steps(self) -> list[int]:
    """The steps of the checkpoints on disk (a save is synchronous: each is complete)."""
    return self.steps()

  def close(self) -> None:
    """Nothing in flight to wait for: saves are synchronous."""

  def _barrier(self) -> None:
    if self.world > 1:
      import torch
      torch.distributed.barrier()

  def _from_rank_0(self, action) -> None:
    """Runs `action` on process 0 alone; its failure is raised on every process (the others
    would otherwise wait for it at the next collective)."""
    error = None
    if self.rank == 0:
      try:
        action()
      except Exception as e:
        error = f"{type(e).__name__}: {e}"
    if self.world > 1:
      import torch
      shared = [error]
      torch.distributed.broadcast_object_list(shared, src=0)
      error = shared[0]
    if error is not None:
      raise RuntimeError(f"checkpoint in {self.directory}: {error}")

  def save(self, step: int, module, optimizer, config_dict: dict) -> None:
    """Writes the state after `step` (synchronous: the loop records its time apart)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    model_state, optim_state = get_state_dict(module, optimizer)
    tmp = os.path.join(self.directory, f"{step}.tmp")
    final = os.path.join(self.directory, str(step))
    digest = {"algorithm": DIGEST, "arrays": state_digest(
        {"model": model_state, "optim": optim_state}, _device(module), self.world)}

    def prepare():
      os.makedirs(self.directory, exist_ok=True)
      for name in os.listdir(self.directory):  # saves killed part-way
        if name.endswith(".tmp"):
          shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
      os.makedirs(tmp)

    def complete():
      with open(os.path.join(tmp, META), "w") as f:
        json.dump({"step": step, "config": config_dict, "framework": "torch", "digest": digest}, f)
      shutil.rmtree(final, ignore_errors=True)
      os.replace(tmp, final)
      for old in self.steps()[:-self.keep] if self.keep > 0 else []:
        shutil.rmtree(os.path.join(self.directory, str(old)), ignore_errors=True)

    try:
      self._from_rank_0(prepare)
      with _single_process_quiet(self.world):
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp,
                 no_dist=self.world == 1)
      self._barrier()  # every process's part is written
      self._from_rank_0(complete)
    except (KeyboardInterrupt, SystemExit):
      raise
    except BaseException as e:  # a full or read-only disk: one line, as the JAX checkpointer says
      # it. DCP's CheckpointException (a BaseException) holds each rank's own error.
      from jaxbench.checkpoint import save_error_reason
      failures = getattr(e, "failures", None)
      if failures:
        e = next(iter(failures.values()))
        e = e[0] if isinstance(e, tuple) else e
      steps = self.steps()
      then = (f"rerun the same command to resume from step {steps[-1]}" if steps
              else "rerun the same command to start again")
      raise ConfigError("--workdir", f"the checkpoint of step {step} could not be written in "
                                     f"{self.directory} ({save_error_reason(e, self.directory)}); "
                                     f"free space there or make it writable, then {then}") from None

  def read_meta(self, step: int) -> dict:
    path = os.path.join(self.directory, str(step), META)
    try:
      with open(path) as f:
        return json.load(f)
    except (OSError, ValueError) as e:
      raise ConfigError("checkpoint", f"cannot read the checkpoint of step {step} in "
                                      f"{self.directory}: {e}; {self._move_aside(step)}") from None

  def _move_aside(self, step: int) -> str:
    older = [s for s in self.steps() if s < step]
    then = f"resume from step {older[-1]}" if older else "start from step 0"
    return f"move {os.path.join(self.directory, str(step))} aside to {then}"

  def restore(self, step: int, module, optimizer) -> None:
    """Loads the state of `step` into `module` and `optimizer` in place (their parallel layout
    now, whatever it was when saved)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    # The optimizer's kernel choice is this run's (fused where the device has it), not the saved
    # one's: loading an optimizer's state puts back every setting it was saved with.
    kernels = [{k: group[k] for k in ("fused", "foreach") if k in group}
               for group in optimizer.param_groups]
    model_state, optim_state = get_state_dict(module, optimizer)
    state = {"model": model_state, "optim": optim_state}
    try:
      with _single_process_quiet(self.world):
        dcp.load(state, checkpoint_id=os.path.join(self.directory, str(step)),
                 no_dist=self.world == 1)
    except Exception as e:  # corrupt, truncated or foreign files
      raise ConfigError("checkpoint", f"cannot read the checkpoint of step {step} in "
                                      f"{self.directory}: {first_line(e)}; "
                                      f"{self._move_aside(step)}") from None
    saved = (self.read_meta(step).get("digest") or {}).get("arrays")
    if saved is not None:
      from jaxbench.checkpoint import digest_mismatch
      bad = digest_mismatch(saved, state_digest(state, _device(module), self.world))
      if bad:
        raise ConfigError("checkpoint", f"the checkpoint of step {step} in {self.directory} is "
                                        f"corrupt: {bad}; {self._move_aside(step)}")
    set_state_dict(module, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
    for group, kernel in zip(optimizer.param_groups, kernels):
      group.update(kernel)


def _device(module):
  """The device the module's parameters are on (the all-reduce's, NCCL's, device)."""
  return next(module.parameters()).device


@contextlib.contextmanager
def _single_process_quiet(world: int):
  """DCP warns at every save and load of one process that it assumes one process: it does."""
  with warnings.catch_warnings():
    if world == 1:
      warnings.filterwarnings("ignore", message=".*assuming the intent is to")
    yield
