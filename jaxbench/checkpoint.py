"""Orbax checkpoints of the train state in <run dir>/checkpoints, and what resuming needs.

A checkpoint holds the whole TrainState (step, params, AdamW state) and, as JSON, the config, the
step and a digest of every array; the data needs no state of its own (a batch is a pure function
of seed and step). The digest, computed on the devices when the save starts, is checked after every
restore: a flipped bit or an overwritten block in a checkpoint's files is exit 2 naming the
checkpoint, never a resumed run that silently trains on other weights. Orbax
writes each checkpoint to a temporary directory and renames it when complete, so a process killed
mid-save leaves the previous checkpoint as the latest usable one. Restoring takes the target
shardings of the *current* mesh: a run saved with fsdp=8 resumes on fsdp=4 x tensor=2 or on one
device.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import re
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxbench import rundir as rundir_lib
from jaxbench.errors import ConfigError, first_line

# The digest of each array: the sum and the sum of squares of its 32-bit words, modulo 2**32.
# Integer sums are exact in any order, so the figure is the same however the array is sharded (a
# checkpoint restored onto another mesh) and whichever device reduces it; a single flipped bit
# changes the sum (by +-2**k), and a block of other data escapes both with odds of about 2**-64.
DIGEST = "u32-sum-sumsq-v1"


def _reason(e: BaseException) -> str:
  """The first line of an error, without the object dumps TensorStore appends after a '<'."""
  return first_line(e).split("<", 1)[0].rstrip(" :,") or type(e).__name__


def _words(x):
  """Array `x`'s bits as uint32 words (narrower types widened, 64-bit ones split in two)."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
  return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _digest_words(leaves):
  """[n, 2] uint32: each leaf's sum and sum of squares of its words."""
  return jnp.stack([jnp.stack([jnp.sum(w, dtype=jnp.uint32), jnp.sum(w * w, dtype=jnp.uint32)])
                    for w in map(_words, leaves)])


@functools.lru_cache(maxsize=8)
def _digest_fn(mesh):
  """_digest_words jitted, its small output replicated over `mesh` (every process reads it)."""
  if mesh is None:
    return jax.jit(_digest_words)
  return jax.jit(_digest_words, out_shardings=jax.sharding.NamedSharding(
      mesh, jax.sharding.PartitionSpec()))


def state_digest(state) -> dict:
  """{array path: "sum:sumsq" in hex} of a (sharded) pytree of arrays, computed where the arrays
  are (one small reduction per array) and brought to the host on every process."""
  paths, leaves = zip(*jax.tree_util.tree_flatten_with_path(state)[0])
  mesh = next((x.sharding.mesh for x in leaves
               if isinstance(getattr(x, "sharding", None), jax.sharding.NamedSharding)), None)
  words = np.asarray(jax.device_get(_digest_fn(mesh)(list(leaves))))
  return {jax.tree_util.keystr(p): f"{int(a):08x}:{int(b):08x}" for p, (a, b) in zip(paths, words)}


class _OrbaxErrors(logging.Filter):
  """Drops Orbax's own ERROR logs (a traceback from each of its background threads when a save
  fails): the failure reaches the run as the save's exception and is reported once, in one line."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname)


_ORBAX_ERRORS = _OrbaxErrors()


class _OrbaxTaskErrors(logging.Filter):
  """Drops asyncio's "Task exception was never retrieved" for Orbax's own writes: on a full disk
  several of its write tasks fail together and asyncio logged each with a traceback (CI's newest
  environment, once), where the save's one exception is the run's one line."""

  def filter(self, record: logging.LogRecord) -> bool:
    if not record.getMessage().startswith("Task exception was never retrieved"):
      return True
    tb = record.exc_info[2] if record.exc_info else None
    while tb is not None:
      if f"{os.sep}orbax{os.sep}" in tb.tb_frame.f_code.co_filename:
        return False
      tb = tb.tb_next
    return True


_ORBAX_TASK_ERRORS = _OrbaxTaskErrors()


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


def digest_mismatch(saved: dict, restored: dict) -> str | None:
  """What differs between a checkpoint's digest written at save time and the restored arrays'
  (None: nothing), naming up to three arrays."""
  bad = [path for path in saved if restored.get(path) != saved[path]]
  missing = [path for path in restored if path not in saved]
  if not bad and not missing:
    return None
  names = ", ".join((bad + missing)[:3]) + (" ..." if len(bad) + len(missing) > 3 else "")
  n = len(bad) + len(missing)
  return (f"{n} of its {len(saved)} arrays {'differs' if n == 1 else 'differ'} from the digest "
          f"written when it was saved ({names})")


def _quiet_closed_loop_callbacks() -> None:
  """After a failed save, TensorStore still completes the writes that were in flight and calls back
  into the asyncio loop Orbax has closed, before the failure reaches the run: each callback's
  RuntimeError('Event loop is closed') goes to sys.unraisablehook, which printed it as a traceback
  (up to dozens for one full disk, seen with orbax-checkpoint 0.12.8). Those, and only those, are
  dropped: the failure is reported once, as the save's error."""
  previous = sys.unraisablehook
  if getattr(previous, "_jaxbench_quiet", False):
    return

  def hook(unraisable):
    last = unraisable.exc_traceback
    while last is not None and last.tb_next is not None:
      last = last.tb_next
    if (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"
        and last is not None and f"{os.sep}asyncio{os.sep}" in last.tb_frame.f_code.co_filename):
      return
    previous(unraisable)

  hook._jaxbench_quiet = True
  sys.unraisablehook = hook


def save_error_reason(e: BaseException, directory: str) -> str:
  """Why a save failed, in one line: the OS's error (errno name, text and, for a full disk, the
  filesystem and its free space), also when TensorStore reports it as a status with an
  os_error_code."""
  if isinstance(e, OSError) and e.errno:
    code = e.errno
  else:
    match = re.search(r"os_error_code='?(\d+)", str(e))
    code = int(match.group(1)) if match else None
  if code is None:  # a library's own words (DCP: "unexpected pos ..."): the disk's state beside them
    return f"{type(e).__name__}: {_reason(e)}; {rundir_lib.filesystem_of(directory)}"
  text = f"{errno.errorcode.get(code, code)}: {os.strerror(code)}"
  if code == errno.ENOSPC:
    text += f" on {rundir_lib.filesystem_of(directory)}"
  return text


def _async_options():
  """Orbax's async options with the checkpoint's folders made in the save call itself: made in the
  background, a folder that cannot be made (a read-only or full disk) left the other background
  threads waiting for it until Orbax's timeout (300 s at exit, seen with orbax-checkpoint 0.12.8);
  made here, the failure is the save's own error, at once. A few mkdirs: no time to speak of."""
  try:
    return ocp.AsyncOptions(create_directories_asynchronously=False)
  except TypeError:  # an Orbax without the option makes them in the save call anyway
    return ocp.AsyncOptions()


class Checkpointer:

  def __init__(self, run_dir: str, every: int, keep: int, async_save: bool = True):
    self.every = every
    self.directory = os.path.abspath(os.path.join(run_dir, "checkpoints"))
    if jax.process_index() == 0:
      self._remove_unfinished()
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save,
                                           async_options=_async_options())
    with _quiet_orbax():
      self._manager = ocp.CheckpointManager(self.directory, options=options)
    logging.getLogger("absl").addFilter(_ORBAX_ERRORS)
    logging.getLogger("asyncio").addFilter(_ORBAX_TASK_ERRORS)
    _quiet_closed_loop_callbacks()
    self._in_flight = None  # the step of the save being written in the background
    self._failed = False

  def _remove_unfinished(self) -> None:
    """Removes the temporary folders of saves that never finished (a kill or a full disk in the
    middle): Orbax would remove each with a warning when it next saves that step."""
    try:
      names = os.listdir(self.directory)
    except OSError:
      return
    for name in names:
      if ".orbax-checkpoint-tmp" in name:
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

  @property
  def enabled(self) -> bool:
    return self.every > 0

  def due(self, step: int) -> bool:
    return self.enabled and step % self.every == 0

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, config_dict: dict) -> None:
    """Starts a save (asynchronous: the device-to-host copy happens now, the write after), with
    the digest of every array of `state` in its JSON part."""
    digest = {"algorithm": DIGEST, "arrays": state_digest(state)}
    self.wait()  # the save before (Orbax waits for it anyway): its failure is named as its own
    try:
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          meta=ocp.args.JsonSave({"step": step, "config": config_dict, "digest": digest})),
          force=True)
    except Exception as e:
      raise self._save_failed(step, e) from None
    self._in_flight = step

  def _save_failed(self, step: int, e: BaseException) -> ConfigError:
    """A save that could not be written (a full or read-only disk, ...) as one line naming the
    disk, the path and what resumes; nothing of it is waited for again."""
    self._failed = True
    complete = self.complete_steps()
    then = (f"rerun the same command to resume from step {complete[-1]}" if complete
            else "rerun the same command to start again")
    return ConfigError("--workdir", f"the checkpoint of step {step} could not be written in "
                                    f"{self.directory} ({save_error_reason(e, self.directory)}); "
                                    f"free space there or make it writable, then {then}")

  def complete_steps(self) -> list[int]:
    """The steps of the complete checkpoints on disk, in order (Orbax writes a checkpoint under a
    temporary name and renames it to its step once every file is in)."""
    try:
      return sorted(int(name) for name in os.listdir(self.directory) if name.isdigit())
    except OSError:
      return []

  def read_meta(self, step: int) -> dict:
    """The JSON part alone (step and config): checked before any array is read."""
    try:
      with _quiet_orbax():
        return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    except Exception as e:
      raise ConfigError("checkpoint", f"cannot read the checkpoint of step {step} in "
                                      f"{self.directory}: {_reason(e)}") from None

  def restore(self, step: int, abstract_state):
    """The state at `step`, laid out by the shardings in `abstract_state`, and its JSON meta
    (with `verified`: whether a digest was there to check the arrays against). ConfigError when
    the files cannot be read or the arrays differ from the digest written at save time."""
    try:
      with _quiet_orbax():
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    except Exception as e:  # corrupt, truncated or foreign files
      raise ConfigError("checkpoint", f"cannot read the checkpoint of step {step} in "
                                      f"{self.directory}: {_reason(e)}; "
                                      f"{self._move_aside(step)}") from None
    meta = dict(restored.meta)
    saved = (meta.get("digest") or {}).get("arrays")
    meta["verified"] = saved is not None
    if saved is not None:
      bad = digest_mismatch(saved, state_digest(restored.state))
      if bad:
        raise ConfigError("checkpoint", f"the checkpoint of step {step} in {self.directory} is "
                                        f"corrupt: {bad}; {self._move_aside(step)}")
    return restored.state, meta

  def _move_aside(self, step: int) -> str:
    """What to do about the bad checkpoint of `step`: move it aside, and what that resumes from."""
    older = [s for s in self.complete_steps() if s < step]
    then = f"resume from step {older[-1]}" if older else "start from step 0"
    return f"move {os.path.join(self.directory, str(step))} aside to {then}"

  def wait(self) -> None:
    """Waits for the save in flight; ConfigError (one line) when it failed."""
    if self._in_flight is None or self._failed:
      return
    try:
      self._manager.wait_until_finished()
    except Exception as e:
      raise self._save_failed(self._in_flight, e) from None
    finally:
      self._in_flight = None

  def close(self) -> None:
    """Waits for the save in flight (ConfigError when it failed) and lets go of Orbax's threads;
    after a failed save nothing is waited for."""
    try:
      self.wait()
    finally:
      try:
        if not self._failed:
          self._manager.close()
      finally:
        logging.getLogger("absl").removeFilter(_ORBAX_ERRORS)
