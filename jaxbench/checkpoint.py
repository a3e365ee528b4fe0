"""Orbax checkpoints of the train state in <run dir>/checkpoints, and what resuming needs.

A checkpoint holds the whole TrainState (step, params, AdamW state) and, as JSON, the config and
the step; the data needs no state of its own (a batch is a pure function of seed and step). Orbax
writes each checkpoint to a temporary directory and renames it when complete, so a process killed
mid-save leaves the previous checkpoint as the latest usable one. Restoring takes the target
shardings of the *current* mesh: a run saved with fsdp=8 resumes on fsdp=4 x tensor=2 or on one
device.
"""

from __future__ import annotations

import contextlib
import logging
import os

import orbax.checkpoint as ocp

from jaxbench.errors import ConfigError

def _reason(e: BaseException) -> str:
  """The first line of an error, without the object dumps TensorStore appends after a '<'."""
  text = str(e).strip()
  first = text.splitlines()[0] if text else type(e).__name__
  return first.split("<", 1)[0].rstrip(" :,") [:300] or type(e).__name__


@contextlib.contextmanager
def _quiet_orbax():
  """Orbax logs an ERROR for each unreadable file it meets; jaxbench reports the failure once,
  as one line, so those logs are held back while it reads checkpoints."""
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    absl_logger.setLevel(level)


class Checkpointer:

  def __init__(self, run_dir: str, every: int, keep: int, async_save: bool = True):
    self.every = every
    self.directory = os.path.abspath(os.path.join(run_dir, "checkpoints"))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    with _quiet_orbax():
      self._manager = ocp.CheckpointManager(self.directory, options=options)

  @property
  def enabled(self) -> bool:
    return self.every > 0

  def due(self, step: int) -> bool:
    return self.enabled and step % self.every == 0

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, config_dict: dict) -> None:
    """Starts a save (asynchronous: the device-to-host copy happens now, the write after)."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave({"step": step, "config": config_dict})), force=True)

  def read_meta(self, step: int) -> dict:
    """The JSON part alone (step and config): checked before any array is read."""
    try:
      with _quiet_orbax():
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    except Exception as e:
      raise ConfigError("checkpoint", f"cannot read the checkpoint of step {step} in "
                                      f"{self.directory}: {_reason(e)}") from None

  def restore(self, step: int, abstract_state):
    """The state at `step`, laid out by the shardings in `abstract_state`, and its JSON meta."""
    try:
      with _quiet_orbax():
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    except Exception as e:  # corrupt, truncated or foreign files
      raise ConfigError("checkpoint", f"cannot read the checkpoint of step {step} in "
                                      f"{self.directory}: {_reason(e)}; move it aside to resume "
                                      "from an older one") from None
    return restored.state, restored.meta

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
