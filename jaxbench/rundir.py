"""The run directory: run.json (context), metrics.jsonl (a line per step), summary.json.

Only process 0 writes. JSON files are replaced atomically; metrics lines are appended and flushed
one at a time, so a crash never leaves a torn line that breaks a reader. With `tensorboard`, every
numeric field of every metrics line is also a TensorBoard scalar (tensorboardX event files in the
run directory), whatever framework trains."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import glob
import json
import math
import os
import socket
import sys
import tempfile
import time

from jaxbench.errors import ConfigError, first_line

# Config keys that must match between a checkpoint and the run resuming from it (and between a
# finished run and one started again in its directory): they decide the shapes and meaning of the
# state. Everything else (steps, mesh, logging, peak) may change.
# `steps` and the optimizer are among them: the learning-rate schedule is a function of both.
MUST_MATCH = ("family", "model.n_layers", "model.d_model", "model.n_heads", "model.n_kv_heads",
              "model.d_ff", "model.vocab_size", "model.max_seq_len", "model.position", "model.norm",
              "model.mlp", "model.bias", "model.tie_embeddings", "model.scan_layers",
              "model.rope_theta", "model.norm_eps", "seed", "steps", "batch_size", "microbatches",
              "seq_len", "dtype", "optimizer.lr", "optimizer.warmup_steps", "optimizer.min_lr_ratio",
              "optimizer.b1", "optimizer.b2", "optimizer.eps", "optimizer.weight_decay",
              "optimizer.decay_embeddings", "optimizer.clip_norm", "data.synthetic",
              "data.markov_branching", "data.path")


def _clean(value):
  """JSON has no NaN or Infinity: non-finite floats become null."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {str(k): _clean(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_clean(v) for v in value]
  return value


def write_json(path: str, obj) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(_clean(obj), f, indent=2, sort_keys=False, default=str)
      f.write("\n")
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def read_metrics(path: str) -> list[dict]:
  """Reads metrics.jsonl; a torn last line (a crash mid-write) is ignored, not fatal."""
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return records


def append_json_line(path: str, record) -> None:
  """Appends one JSON line and syncs it. A line a crash left torn is ended first: glued to it,
  the record would be lost to every reader, and a resumed sweep would redo its point forever."""
  line = (json.dumps(_clean(record), default=str) + "\n").encode()
  with open(path, "ab+") as f:
    if f.seek(0, os.SEEK_END) > 0:
      f.seek(-1, os.SEEK_END)
      if f.read(1) != b"\n":
        line = b"\n" + line
    f.write(line)
    f.flush()
    os.fsync(f.fileno())


def read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def import_tensorboardx():
  """tensorboardX, without PyTorch: its writer imports torch whenever it can (to accept torch
  tensors), which would cost a JAX run seconds and load a second set of CUDA libraries. torch is
  hidden while tensorboardX loads, unless this process has it already (the PyTorch twin)."""
  hide = "torch" not in sys.modules
  if hide:
    sys.modules["torch"] = None  # `import torch` raises ImportError: tensorboardX's fallback
  try:
    import tensorboardX
  finally:
    if hide and "torch" in sys.modules and sys.modules["torch"] is None:
      del sys.modules["torch"]
  return tensorboardX


class ScalarWriter:
  """TensorBoard scalars (tensorboardX: pure Python, no TensorFlow) from metrics records: one tag
  per numeric field, at the record's step. A record is one event holding all its values (an
  event per value costs the loop ~10x more: each goes through the writer's queue)."""

  def __init__(self, path: str):
    try:
      tensorboardx = import_tensorboardx()
      from tensorboardX.proto.summary_pb2 import Summary
    except ImportError:
      raise ConfigError("tensorboard", "True needs tensorboardX, which is not installed: "
                                       "pip install 'jaxbench[tensorboard]'") from None
    self._summary = Summary
    # A long queue: the loop hands records over and never waits for the writer thread.
    # Its own file name, also when a run starts again within the second (the default name has
    # the time in seconds): a resumed run replaces the files of its earlier starts.
    self._writer = tensorboardx.FileWriter(path, max_queue=1024, flush_secs=10,
                                           filename_suffix=f".{time.time_ns()}")

  def add(self, record: dict) -> None:
    values = [self._summary.Value(tag=key, simple_value=value) for key, value in record.items()
              if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value)]
    if values:
      self._writer.add_summary(self._summary(value=values), global_step=record.get("step"))

  def close(self) -> None:
    self._writer.close()  # flushes


class RunDir:

  def __init__(self, path: str, writer: bool = True, tensorboard: bool = False):
    self.path = path
    self.writer = writer
    self._metrics = None
    self._scalars = None
    self._earlier_events = []  # event files of an earlier start of this run, replaced on resume
    if writer:
      if tensorboard:
        self._earlier_events = glob.glob(os.path.join(path, "events.out.tfevents.*"))
        self._scalars = ScalarWriter(path)  # a missing tensorboardX fails before the directory
      os.makedirs(path, exist_ok=True)

  def file(self, name: str) -> str:
    return os.path.join(self.path, name)

  def write(self, name: str, obj) -> None:
    if self.writer:
      write_json(self.file(name), obj)

  def remove(self, name: str) -> None:
    if self.writer:
      with contextlib.suppress(FileNotFoundError):
        os.unlink(self.file(name))

  def start_over(self) -> None:
    """An unfinished earlier start without checkpoints (earlier_run): its metrics, TensorBoard
    events and summary go; this start replaces them."""
    self.truncate_metrics(0)
    self.remove("summary.json")

  def append_metrics(self, record: dict) -> None:
    if not self.writer:
      return
    if self._metrics is None:
      self._metrics = open(self.file("metrics.jsonl"), "a", buffering=1)
    self._metrics.write(json.dumps(_clean(record)) + "\n")
    self._metrics.flush()
    if self._scalars is not None:
      self._scalars.add(record)

  def truncate_metrics(self, last_step: int) -> list[dict]:
    """On resume (or, with 0, a restart from the first step): keep the records up to the
    checkpoint's step, so the steps trained again after it are neither duplicated nor missing;
    returns them ([] on the processes that do not write). With TensorBoard on, the event files of
    the earlier starts are replaced by the kept records (TensorBoard would otherwise show the steps
    trained again twice; and with TensorBoard off then, they hold the earlier steps all the same)."""
    if not self.writer:
      return []
    kept = []
    if os.path.exists(self.file("metrics.jsonl")):
      kept = [r for r in read_metrics(self.file("metrics.jsonl")) if r.get("step", 0) <= last_step]
      directory = os.path.dirname(os.path.abspath(self.file("metrics.jsonl")))
      fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".jsonl")
      with os.fdopen(fd, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
      os.replace(tmp, self.file("metrics.jsonl"))
    if self._scalars is not None:
      if kept:  # into a file of their own, closed (its queue drained) before the earlier files go
        for record in kept:
          self._scalars.add(record)
        self._scalars.close()
      for path in self._earlier_events:
        with contextlib.suppress(FileNotFoundError):
          os.unlink(path)
      self._earlier_events = []
      if kept:  # the steps trained from here on: into the next file
        self._scalars = ScalarWriter(self.path)
    return kept

  def close(self) -> None:
    if self._metrics is not None:
      self._metrics.flush()
      os.fsync(self._metrics.fileno())
      self._metrics.close()
      self._metrics = None
    if self._scalars is not None:
      self._scalars.close()
      self._scalars = None


def write_summary(out: RunDir, summary: dict, failing: bool) -> None:
  """summary.json, then the run directory closed. When the run is already `failing` and the disk
  refuses the summary too (the full disk that failed a save), the run's own error is the one
  reported, not the summary's."""
  try:
    out.write("summary.json", summary)
    out.close()
  except OSError:
    if not failing:
      raise


def check_compatible(saved: dict, current: dict, what: str = "the checkpoint",
                     hint: str = "resume with the same value or use a new --workdir",
                     keys: tuple = MUST_MATCH) -> None:
  """ConfigError naming the first of `keys` whose change would make the checkpoint (or `what`:
  the earlier run) mean something else."""
  def get(d, key):
    for part in key.split("."):
      if not isinstance(d, dict) or part not in d:
        return None
      d = d[part]
    return d
  def same(key, a, b):
    if key == "data.path" and a and b:  # the same folder, however it was written
      return os.path.realpath(a) == os.path.realpath(b)
    return a == b
  for key in keys:
    if not same(key, get(saved, key), get(current, key)):
      raise ConfigError(key, f"{what} was made with {key}={get(saved, key)!r}, this run "
                             f"has {get(current, key)!r}; {hint}")


# Config keys that leave a training step's time as it is: the segments of a resumed run whose
# configs differ in these alone are timed as one run (runlog.timing_context), and a finished run
# started again with such changes has nothing to do.
UNTIMED_KEYS = ("preset", "log_every", "warmup_steps_excluded", "peak_tflops", "tensorboard",
                "profile_steps", "dump_hlo", "eval", "checkpoint", "memory_check")


def timed_keys(*configs: dict) -> tuple:
  """The dotted config keys of `configs` (dicts) outside UNTIMED_KEYS."""
  def walk(d, prefix=""):
    for k, v in d.items():
      if not prefix and k in UNTIMED_KEYS:
        continue
      if isinstance(v, dict):
        yield from walk(v, f"{prefix}{k}.")
      else:
        yield f"{prefix}{k}"
  return tuple(sorted({key for c in configs for key in walk(c)}))


def finished_summary(path: str, steps: int) -> dict | None:
  """Run directory `path`'s summary.json if it records the run finished all `steps`, else None."""
  try:
    summary = read_json(os.path.join(path, "summary.json"))
  except (OSError, ValueError):
    return None
  return summary if summary.get("status") == "finished" and summary.get("steps") == steps else None


def check_resume(path: str, step: int, saved_config: dict, config: dict) -> dict | None:
  """A run in `path` resuming from its checkpoint of `step`, saved with `saved_config`: its
  summary when it finished its steps (nothing to do); None when there are steps left to train;
  ConfigError when `config` means another run, or when the checkpoint is of the last step but no
  summary says the run finished."""
  check_compatible(saved_config, config)
  # Finished, whatever its latest checkpoint (a run resumed with checkpoint.every=0 saves none).
  done = finished_summary(path, config["steps"])
  if done is not None:
    try:
      finished_config = read_json(os.path.join(path, "run.json")).get("config") or saved_config
    except (OSError, ValueError):
      finished_config = saved_config
    _check_finished(path, finished_config, config)
    return done
  if step >= config["steps"]:
    raise ConfigError("steps", f"the run in {path} already reached its last step ({step}); use a "
                               "new --workdir")
  return None


def _check_finished(path: str, finished_config: dict, config: dict) -> None:
  """ConfigError unless `config` is the finished run's own but for UNTIMED_KEYS: its summary stands
  for this run only if nothing that decides a step's time changed either."""
  check_compatible(finished_config, config, what=f"the finished run in {path}",
                   hint="use a new --workdir",
                   keys=MUST_MATCH + timed_keys(finished_config, config))  # MUST_MATCH named first


def what_is_there(path: str, config: dict) -> tuple[bool, dict | None]:
  """(resuming, earlier) for a run of `config` (a dict) starting in run directory `path`, read
  once its lock is held: whether it resumes from a checkpoint there, else what an earlier start
  without checkpoints left (earlier_run)."""
  resuming = resumable(path, config)
  return resuming, None if resuming else earlier_run(path, config)


def resumable(path: str | None, config: dict) -> bool:
  """Whether run directory `path` holds a run to resume from its checkpoint; ConfigError when it
  holds another framework's run (neither reads the other's checkpoints)."""
  if not path or not os.path.exists(os.path.join(path, "run.json")):
    return False
  check_framework(path, config)
  return has_checkpoint(path)


def check_framework(path: str, config: dict, saved_config: dict | None = None) -> None:
  """ConfigError when run directory `path` holds a run of another framework (JAX or the torch
  twin): neither reads the other's checkpoints, and its results are kept. `saved_config`: its
  run.json's config, where the caller has read it."""
  if saved_config is None:
    try:
      saved_config = read_json(os.path.join(path, "run.json")).get("config") or {}
    except (OSError, ValueError):
      return
  saved = saved_config.get("framework", "jax")
  if saved != config.get("framework", "jax"):
    raise ConfigError("framework", f"{path} holds a run with framework={saved!r}, this run has "
                                   f"{config.get('framework', 'jax')!r}; use a new --workdir")


def earlier_run(path: str, config: dict) -> dict | None:
  """What an earlier start without checkpoints left in run directory `path`, for a run of
  `config` (a dict): None when nothing; {"finished": its summary} when it finished a run of this
  config (ConfigError when it finished one of another framework or config: it is kept); else how
  far it got, run.json's `restarted` (`earlier_status`, `earlier_steps`, `earlier_started_at`), for
  a start from step 0 that replaces its files (RunDir.start_over)."""
  try:
    previous = read_json(os.path.join(path, "run.json"))
  except FileNotFoundError:
    return None
  except (OSError, ValueError):
    previous = {}
  try:
    summary = read_json(os.path.join(path, "summary.json"))
  except (OSError, ValueError):
    summary = {}
  saved = previous.get("config") or {}
  check_framework(path, config, saved)
  if summary.get("status") == "finished":
    _check_finished(path, saved, config)
    return {"finished": summary}
  check_compatible(saved, config, what=f"the unfinished run in {path}",
                   hint="start it with its own config to replace it, or use a new --workdir")
  metrics = os.path.join(path, "metrics.jsonl")
  records = read_metrics(metrics) if os.path.exists(metrics) else []
  return {"earlier_status": summary.get("status", "ended without a summary (killed?)"),
          "earlier_steps": max((r.get("step", 0) for r in records), default=0),
          "earlier_started_at": previous.get("started_at")}


# --- whose run directory ------------------------------------------------------------------------

LOCK_NAME = ".jaxbench.lock"
# What a start may leave before its run.json exists: the lock, temporary files of atomic writes,
# and the checkpoint folder the checkpointer creates (empty until the first save, which follows
# run.json).
_BEFORE_RUN_JSON = (LOCK_NAME, ".tmp-")
_PROBE = ".tmp-write-probe-"  # check_workdir's, removed at once


def check_workdir(path: str, checkpoints: bool) -> None:
  """ConfigError('--workdir') unless run directory `path` can hold this run: a folder (or none
  yet, then created) that this process can write, with a writable `checkpoints/` folder when
  `checkpoints`. Checked before anything compiles."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError("--workdir", f"{path} is a file, not a folder; use a new --workdir")
  _check_writable(path, "--workdir", f"{path}")
  ckpt = os.path.join(path, "checkpoints")
  if os.path.exists(ckpt) and not os.path.isdir(ckpt):
    raise ConfigError("--workdir", f"{ckpt} is a file, not a folder: move it aside or use a new "
                                   "--workdir")
  if checkpoints:
    _check_writable(ckpt, "checkpoint.every", f"checkpoints need {ckpt}")


def check_output_folder(path: str, flag: str, replace: bool = True) -> None:
  """ConfigError naming `flag` unless folder `path` can be written: not a file, on a writable
  filesystem (probed in it, or in the nearest folder above it that exists: nothing is created),
  and, unless `replace`, not holding files already. Checked before the work whose results go
  there."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise ConfigError(flag, f"{path} is a file, not a folder")
  if not replace and os.path.isdir(path) and os.listdir(path):
    raise ConfigError(flag, f"{path} holds files already; move them aside, or pass --overwrite "
                            "to replace what it writes there")
  existing = os.path.abspath(path)
  while not os.path.isdir(existing):
    parent = os.path.dirname(existing)
    if os.path.exists(existing) or parent == existing:  # a file on the way: makedirs would fail
      raise ConfigError(flag, f"{path} cannot be made: {existing} is not a folder")
    existing = parent
  try:
    fd, probe = tempfile.mkstemp(dir=existing, prefix=_PROBE)
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    raise ConfigError(flag, f"cannot write {path} ({os_reason(e, existing)})") from None


def check_output_file(path: str, flag: str) -> None:
  """ConfigError naming `flag` unless file `path` can be written: its folder exists and takes a
  file, and `path` is not a folder. Nothing is created."""
  if os.path.isdir(path):
    raise ConfigError(flag, f"{path} is a folder; give a file name")
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):
    raise ConfigError(flag, f"{folder} does not exist (make it first, or write elsewhere)")
  try:
    fd, probe = tempfile.mkstemp(dir=folder, prefix=_PROBE)
    os.close(fd)
    os.unlink(probe)
  except OSError as e:
    raise ConfigError(flag, f"cannot write in {folder} ({os_reason(e, folder)})") from None


def _check_writable(path: str, key: str, what: str) -> None:
  """Creates folder `path` if missing and writes a file into it: ConfigError naming `key` when the
  filesystem refuses (read-only, no permission, full), with the OS's reason."""
  try:
    os.makedirs(path, exist_ok=True)
    fd, probe = tempfile.mkstemp(dir=path, prefix=_PROBE)
    try:
      os.write(fd, b"jaxbench")
      os.fsync(fd)
    finally:
      os.close(fd)
      os.unlink(probe)
  except OSError as e:
    raise ConfigError(key, f"{what}: cannot write there ({os_reason(e, path)}); use a writable "
                           "--workdir") from None


def os_reason(e: OSError, path: str | None = None) -> str:
  """An OSError in one line: its errno's name and text, and for a full disk the filesystem of
  `path` (else of the error's file) with its free space."""
  name = errno.errorcode.get(e.errno, "") if e.errno else ""
  text = e.strerror or first_line(e)
  where = path or e.filename
  if e.errno == errno.ENOSPC and where:
    text += f" on {filesystem_of(where)}"
  return f"{name}: {text}" if name else text


def filesystem_of(path: str) -> str:
  """'the filesystem of /mount (N MiB free)': the mount point holding `path`, for a message."""
  path = os.path.abspath(path)
  while not os.path.exists(path) and path != os.path.dirname(path):
    path = os.path.dirname(path)
  mount = path
  while not os.path.ismount(mount):
    mount = os.path.dirname(mount)
  try:
    st = os.statvfs(path)
    return f"the filesystem mounted at {mount} ({st.f_bavail * st.f_frsize / 2**20:,.1f} MiB free)"
  except OSError:
    return f"the filesystem mounted at {mount}"


def check_owned(path: str) -> None:
  """ConfigError unless what run directory `path` holds is provably a jaxbench run's: a run.json
  that reads as one (a summary.json beside it too), or, without run.json, nothing a start leaves
  before writing it. Checkpoints, metrics or any other file with no run.json to say whose they are
  are not deleted or appended to: the user moves them aside."""
  if not os.path.isdir(path):
    return
  run_json = os.path.join(path, "run.json")
  if os.path.exists(run_json):
    try:
      info = read_json(run_json)
      if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
        raise ValueError("no 'config' object in it")
    except (OSError, ValueError) as e:
      raise ConfigError("--workdir", f"{run_json} is not a jaxbench run.json ({first_line(e)}): "
                                     "move it aside or use a new --workdir") from None
    summary = os.path.join(path, "summary.json")
    if os.path.exists(summary):
      try:
        if not isinstance(read_json(summary), dict):
          raise ValueError("not a JSON object")
      except (OSError, ValueError) as e:
        raise ConfigError("--workdir", f"{summary} is not a jaxbench summary.json "
                                       f"({first_line(e)}): move it aside or use a new "
                                       "--workdir") from None
    return
  foreign = sorted(name for name in os.listdir(path)
                   if not name.startswith(_BEFORE_RUN_JSON)
                   and not (name == "checkpoints" and _empty_folder(os.path.join(path, name))))
  if foreign:
    shown = ", ".join(name + ("/" if os.path.isdir(os.path.join(path, name)) else "")
                      for name in foreign[:5]) + (f" and {len(foreign) - 5} more"
                                                  if len(foreign) > 5 else "")
    raise ConfigError("--workdir", f"{path} holds {shown} but no run.json, so nothing shows they "
                                   "are this run's: move them aside or use a new --workdir")


def _empty_folder(path: str) -> bool:
  """A folder holding nothing, or only the write probes of check_workdir: the other processes of
  a multi-process run probe `checkpoints/` while process 0 checks the run directory."""
  return os.path.isdir(path) and all(name.startswith(_PROBE) for name in os.listdir(path))


class RunLock:
  """One run at a time in a run directory: an exclusive flock on DIR/.jaxbench.lock, held by the
  run's writing process (process 0) from before it reads the directory until it ends. The kernel
  releases it however the process ends, so a lock left by a killed run never blocks its resume.
  The file names its holder (host, pid, start) for the message a second start gets."""

  def __init__(self, path: str):
    self.path = os.path.join(path, LOCK_NAME)
    self._file = None

  def acquire(self) -> "RunLock":
    try:
      f = open(self.path, "a+")
    except OSError as e:
      raise ConfigError("--workdir", f"cannot create {self.path} ({os_reason(e)})") from None
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      f.seek(0)
      holder = f.read().strip() or "another process"
      f.close()
      if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise ConfigError("--workdir", f"cannot lock {self.path} ({os_reason(e)})") from None
      raise ConfigError("--workdir", f"{os.path.dirname(self.path)} is in use by another jaxbench "
                                     f"run ({holder}): wait for it to end, or use a new "
                                     "--workdir") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}, started "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    self._file = f
    return self

  def release(self) -> None:
    if self._file is not None:
      self._file.close()  # closing the file releases the lock
      self._file = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.release()


def claim(path: str, writer: bool, checkpoints: bool) -> RunLock | None:
  """Run directory `path` for this run: check_workdir on this process, the lock on the writing
  process (None on the others), then check_owned (a directory is never appended to or cleared
  on a guess). ConfigError when `path` cannot be this run's or another run is using it."""
  check_workdir(path, checkpoints)
  lock = RunLock(path).acquire() if writer else None
  try:
    check_owned(path)
  except BaseException:
    if lock is not None:
      lock.release()
    raise
  return lock


def has_checkpoint(run_dir: str) -> bool:
  """Whether a complete checkpoint exists (Orbax's for JAX runs, DCP's for the twin), without
  starting either: complete checkpoints are directories named by their step; unfinished ones keep
  a temporary suffix."""
  try:
    return any(name.isdigit() for name in os.listdir(os.path.join(run_dir, "checkpoints")))
  except OSError:
    return False
