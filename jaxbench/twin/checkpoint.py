"""The twin's checkpoints: its whole train state (parameters and AdamW state, of one process, DDP
or FSDP2 alike) with torch.distributed.checkpoint (DCP) in <run dir>/checkpoints/<step>, and the
step and config as JSON beside it; the layout of jaxbench/checkpoint.py's Orbax checkpoints, which
JAX runs write (run.json's `framework` tells the two apart; neither reads the other's).

Every process writes its part into <step>.tmp; once all have, process 0 adds the JSON and renames
the folder to <step>, so a process killed mid-save leaves the previous checkpoint as the latest
complete one (a folder named by its step alone is complete). DCP reshards on load: a run saved
under FSDP over 4 processes resumes on 2, or on one. The folder must be one every process sees.
"""

from __future__ import annotations

import json
import os
import shutil

from jaxbench.errors import ConfigError

META = "jaxbench_meta.json"


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

  def _barrier(self) -> None:
    if self.world > 1:
      import torch
      torch.distributed.barrier()

  def save(self, step: int, module, optimizer, config_dict: dict) -> None:
    """Writes the state after `step` (synchronous: the loop records its time apart)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    model_state, optim_state = get_state_dict(module, optimizer)
    tmp, final = os.path.join(self.directory, f"{step}.tmp"), os.path.join(self.directory, str(step))
    if self.rank == 0:
      shutil.rmtree(tmp, ignore_errors=True)  # a save killed part-way
      os.makedirs(tmp)
    self._barrier()
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=tmp,
             no_dist=self.world == 1)
    self._barrier()  # every process's part is written
    if self.rank == 0:
      with open(os.path.join(tmp, META), "w") as f:
        json.dump({"step": step, "config": config_dict, "framework": "torch"}, f)
      shutil.rmtree(final, ignore_errors=True)
      os.replace(tmp, final)
      for old in self.steps()[:-self.keep] if self.keep > 0 else []:
        shutil.rmtree(os.path.join(self.directory, str(old)), ignore_errors=True)
    self._barrier()

  def read_meta(self, step: int) -> dict:
    path = os.path.join(self.directory, str(step), META)
    try:
      with open(path) as f:
        return json.load(f)
    except (OSError, ValueError) as e:
      raise ConfigError("checkpoint", f"cannot read the checkpoint of step {step} in "
                                      f"{self.directory}: {e}; move it aside to resume from an "
                                      "older one") from None

  def restore(self, step: int, module, optimizer) -> None:
    """Loads the state of `step` into `module` and `optimizer` in place (their parallel layout
    now, whatever it was when saved)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    model_state, optim_state = get_state_dict(module, optimizer)
    state = {"model": model_state, "optim": optim_state}
    try:
      dcp.load(state, checkpoint_id=os.path.join(self.directory, str(step)),
               no_dist=self.world == 1)
    except Exception as e:  # corrupt, truncated or foreign files
      first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
      raise ConfigError("checkpoint", f"cannot read the checkpoint of step {step} in "
                                      f"{self.directory}: {first}; move it aside to resume from "
                                      "an older one") from None
    set_state_dict(module, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])
