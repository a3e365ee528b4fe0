"""Faults a run directory meets (issue #25): two runs in one folder, corrupt checkpoints, folders
that are not this run's, token ids beyond the vocabulary, a step that cannot fit, unwritable or
full disks, bad config files and output paths. Each ends in exit 2 and one line naming the culprit
(or a clean resume), with nothing lost. Disk faults run in a mount namespace of the test's own
(`unshare -rm`: a small or read-only tmpfs), where the kernel allows one."""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import cli_env, read_json, spawn

from jaxbench import checkpoint as checkpoint_lib
from jaxbench import config as config_lib
from jaxbench import rundir
from jaxbench.errors import ConfigError

NANO = ["train", "--config=configs/mpt.py:nano", "--config.peak_tflops=1", "--config.log_every=1",
        "--config.warmup_steps_excluded=1"]


def jaxbench(args, tmp_path, timeout=600, **env):
  return subprocess.run([sys.executable, "-m", "jaxbench", *args], cwd=tmp_path,
                        env=cli_env(tmp_path, **env), capture_output=True, text=True,
                        timeout=timeout)


def train(args, tmp_path, **env):
  return jaxbench([*NANO, *args], tmp_path, **env)


def one_line(proc, *needles):
  """The process exited 2 with one line on stderr holding every needle, and no traceback."""
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  for needle in needles:
    assert needle in lines[0], (needle, lines[0])
  return lines[0]


def losses(run_dir):
  return [(r["step"], r["loss"]) for r in rundir.read_metrics(str(run_dir / "metrics.jsonl"))]


def files(run_dir):
  """Every file under run_dir with its bytes (but the lock, whose text names its holder)."""
  return {os.path.relpath(os.path.join(root, name), run_dir): open(os.path.join(root, name), "rb").read()
          for root, _, names in os.walk(run_dir) for name in names if name != rundir.LOCK_NAME}


def _can_unshare() -> bool:
  if not shutil.which("unshare"):
    return False
  probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
                         capture_output=True)
  return probe.returncode == 0


needs_mounts = pytest.mark.skipif(not _can_unshare(), reason="the kernel gives this user no mount "
                                  "namespace (unshare -rm) for a small or read-only tmpfs")


def in_namespace(script: str, tmp_path, timeout=600):
  """`script` (sh) in a mount namespace of its own, as root there, with jaxbench's test env."""
  return subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=tmp_path,
                        env=cli_env(tmp_path), capture_output=True, text=True, timeout=timeout)


PY = f"{sys.executable} -m jaxbench " + " ".join(NANO)


# --- 1. one run at a time in a run directory ------------------------------------------------------

def test_a_second_train_on_a_live_runs_workdir_exits_2_and_a_dead_runs_lock_does_not_block(tmp_path):
  first = spawn([sys.executable, "-m", "jaxbench", *NANO, "--config.steps=100000",
                 "--workdir=run"], cwd=tmp_path, env=cli_env(tmp_path), stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True)
  for line in first.stdout:  # the first run holds the directory once it prints this
    if "compiling the train step" in line:
      break
  second = train(["--config.steps=100000", "--workdir=run"], tmp_path)
  one_line(second, "--workdir", "in use by another jaxbench run", f"pid {first.pid}")
  first.kill()
  first.wait()
  # A lock left by a killed run does not block. (Killed while compiling, it had written nothing
  # yet: nothing there is another run's, so another config may start there.)
  again = train(["--config.steps=3", "--workdir=run"], tmp_path)
  assert again.returncode == 0 and "step 3/3" in again.stdout, again.stderr[-3000:]


def test_the_twin_refuses_a_workdir_in_use(tmp_path):
  pytest.importorskip("torch")
  with rundir.RunLock(str(tmp_path / "run")) as lock:
    os.makedirs(tmp_path / "run", exist_ok=True)
    lock.acquire()
    proc = train(["--config.framework=torch", "--config.steps=3", "--workdir=run"], tmp_path)
  one_line(proc, "in use by another jaxbench run", f"pid {os.getpid()}")
  assert not (tmp_path / "run" / "run.json").exists()


def test_a_lock_dies_with_its_process(tmp_path):
  holder = subprocess.run([sys.executable, "-c", (
      "import os, sys; sys.path.insert(0, sys.argv[1]); from jaxbench import rundir; "
      "os.makedirs(sys.argv[2], exist_ok=True); rundir.RunLock(sys.argv[2]).acquire(); "
      "os.kill(os.getpid(), 9)"), os.path.dirname(os.path.dirname(__file__)),
      str(tmp_path / "run")], capture_output=True)
  assert holder.returncode == -9
  rundir.RunLock(str(tmp_path / "run")).acquire().release()  # free again


# --- 2. corrupt checkpoints -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  """A finished 8-step run with checkpoints at 2, 4, 6, 8."""
  tmp = tmp_path_factory.mktemp("uninterrupted")
  proc = train(["--config.steps=8", "--config.checkpoint.every=2", "--config.checkpoint.keep=4",
                "--workdir=run"], tmp)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return tmp / "run"


def as_if_killed_after(run_dir, step, dst):
  """`run_dir` as a kill after `step`'s save left it: later checkpoints and the summary gone."""
  shutil.copytree(run_dir, dst)
  for name in os.listdir(dst / "checkpoints"):
    if name.isdigit() and int(name) > step:
      shutil.rmtree(dst / "checkpoints" / name)
  (dst / "summary.json").unlink()
  return dst


def flip_a_bit(checkpoint_dir):
  """Flips one bit in the middle of the checkpoint's largest data file."""
  path = max((os.path.join(root, name) for root, _, names in os.walk(checkpoint_dir)
              for name in names), key=os.path.getsize)
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x10
  open(path, "wb").write(bytes(data))


def test_a_flipped_bit_in_a_checkpoint_exits_2_and_moving_it_aside_resumes_bitwise(
    tmp_path, uninterrupted):
  run = as_if_killed_after(uninterrupted, 6, tmp_path / "run")
  flip_a_bit(run / "checkpoints" / "6")
  before = files(run)
  args = ["--config.steps=8", "--config.checkpoint.every=2", "--config.checkpoint.keep=4",
          "--workdir=run"]
  proc = train(args, tmp_path)
  one_line(proc, "checkpoint", "step 6", "corrupt", "from the digest written when it was saved",
           "aside to resume from step 4")
  assert files(run) == before  # nothing of the run directory changed
  shutil.move(run / "checkpoints" / "6", tmp_path / "bad-6")
  proc = train(args, tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resuming from the checkpoint of step 4" in proc.stdout
  assert losses(run) == losses(uninterrupted)  # bitwise


def test_the_digest_is_the_same_on_any_mesh_and_catches_any_changed_word():
  import jax
  import jax.numpy as jnp
  state = {"w": jnp.arange(64 * 8, dtype=jnp.float32).reshape(64, 8) / 7, "n": jnp.int32(3),
           "h": jnp.ones((5,), jnp.bfloat16)}
  digest = checkpoint_lib.state_digest(state)
  mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("fsdp",))
  sharded = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
  assert checkpoint_lib.state_digest(sharded) == digest
  w = np.asarray(state["w"]).copy()
  w.view(np.uint32)[17, 3] ^= 1 << 31  # one bit
  changed = checkpoint_lib.state_digest({**state, "w": jnp.asarray(w)})
  assert checkpoint_lib.digest_mismatch(digest, changed).startswith("1 of its 3 arrays")
  assert "['w']" in checkpoint_lib.digest_mismatch(digest, changed)


def test_the_twins_corrupt_checkpoint_exits_2(tmp_path):
  pytest.importorskip("torch")
  args = ["--config.framework=torch", "--config.steps=4", "--config.checkpoint.every=2",
          "--workdir=full"]
  full = train(args, tmp_path)
  assert full.returncode == 0, full.stderr[-3000:]
  run = as_if_killed_after(tmp_path / "full", 2, tmp_path / "run")
  flip_a_bit(run / "checkpoints" / "2")
  proc = train([*args[:-1], "--workdir=run"], tmp_path)
  one_line(proc, "checkpoint", "step 2", "corrupt", "aside to start from step 0")


# --- 3. folders that are not this run's -----------------------------------------------------------

@pytest.mark.parametrize("case,needles", [
    ("checkpoints, no run.json", ("--workdir", "checkpoints/", "metrics.jsonl", "no run.json",
                                  "move them aside")),
    ("junk run.json", ("--workdir", "run.json is not a jaxbench run.json")),
    ("junk summary.json", ("--workdir", "summary.json is not a jaxbench summary.json")),
    ("a file", ("--workdir", "is a file, not a folder")),
    ("checkpoints is a file", ("--workdir", "checkpoints is a file")),
])
def test_a_run_directory_that_is_not_provably_this_runs_is_left_alone(tmp_path, capsys, case,
                                                                       needles):
  from jaxbench import train as train_lib
  run = tmp_path / "run"
  if case == "a file":
    run.write_text("notes")
  else:
    os.makedirs(run / "checkpoints" / "5")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n')
    if case == "junk run.json":
      (run / "run.json").write_text("{ not json")
    if case == "junk summary.json":
      (run / "run.json").write_text(json.dumps({"config": {"family": "mpt"}}))
      (run / "summary.json").write_text("[1, 2")
    if case == "checkpoints is a file":
      shutil.rmtree(run / "checkpoints")
      (run / "checkpoints").write_text("x")
  before = files(run) if run.is_dir() else run.read_bytes()
  code = train_lib.main(["jaxbench train", "--config=configs/mpt.py:nano", "--config.steps=3",
                         "--config.warmup_steps_excluded=1", f"--workdir={run}"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1, err
  for needle in needles:
    assert needle in err[0], (needle, err[0])
  assert (files(run) if run.is_dir() else run.read_bytes()) == before


def test_another_processs_write_probe_in_checkpoints_is_not_a_foreign_file(tmp_path):
  # Each process of a multi-process run probes checkpoints/ (check_workdir) while process 0
  # checks the directory: a probe caught there in flight is no one's checkpoint (four twin
  # processes with checkpoint.every met it and exited 2).
  from jaxbench import rundir
  os.makedirs(tmp_path / "run" / "checkpoints")
  (tmp_path / "run" / "checkpoints" / ".tmp-write-probe-x1y2").write_text("jaxbench")
  rundir.check_owned(str(tmp_path / "run"))  # no ConfigError
  (tmp_path / "run" / "checkpoints" / "5").mkdir()
  with pytest.raises(rundir.ConfigError, match="checkpoints/"):
    rundir.check_owned(str(tmp_path / "run"))


# --- 4. token ids beyond the vocabulary ------------------------------------------------------------

@pytest.fixture
def dataset(tmp_path):
  (tmp_path / "a.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 400)
  proc = jaxbench(["prepare", "--input=a.txt", "--output=data"], tmp_path)
  assert proc.returncode == 0, proc.stderr
  return tmp_path / "data"


def test_token_ids_beyond_the_vocabulary_exit_2_before_compiling(tmp_path, dataset, capsys):
  from jaxbench import train as train_lib
  from jaxbench.tokenfile import TokenFileData
  meta = read_json(dataset / "meta.json")
  assert meta["token_scan"]["train.bin"]["max_id"] == max(b"the quick brown fox jumps over lazy dog")
  c = config_lib.load_with_overrides("configs/mpt.py:nano", {"data.path": str(dataset),
                                                               "model.vocab_size": 512})
  TokenFileData(str(dataset), "train", c)  # clean: the cached scan says so
  tokens = np.memmap(dataset / "train.bin", dtype="<u2", mode="r+")
  tokens[1234] = 300  # an id the file's vocabulary (257) does not have; a sparse one
  tokens.flush()
  del tokens
  os.utime(dataset / "train.bin", ns=(1, 1))  # even with another modification time the scan...
  os.utime(dataset / "train.bin")  # ...is taken again whenever the time differs
  with pytest.raises(ConfigError) as e:
    TokenFileData(str(dataset), "train", c)
  assert e.value.key == "data.path" and "token id 300" in str(e.value)
  assert "token 1,234 of the file" in str(e.value) and "meta.json's vocab_size is 257" in str(e.value)
  assert read_json(dataset / "meta.json")["token_scan"]["train.bin"]["max_id"] == 300
  code = train_lib.main(["jaxbench train", "--config=configs/mpt.py:nano", "--config.steps=3",
                         "--config.warmup_steps_excluded=1", f"--config.data.path={dataset}",
                         "--config.model.vocab_size=257", f"--workdir={tmp_path / 'run'}"])
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and "set --config.model.vocab_size=301" in err[0], err
  assert not (tmp_path / "run").exists()


def test_a_dataset_without_a_cached_scan_is_scanned(dataset):
  from jaxbench import tokenfile
  meta = read_json(dataset / "meta.json")
  del meta["token_scan"]
  (dataset / "meta.json").write_text(json.dumps(meta))
  assert tokenfile.max_token_id(str(dataset), meta, "val.bin", np.dtype("<u2")) == 256  # the EOD
  assert read_json(dataset / "meta.json")["token_scan"]["val.bin"]["max_id"] == 256


# --- 5. a step that cannot fit -------------------------------------------------------------------

def test_a_model_that_cannot_fit_the_host_exits_2_before_allocating(tmp_path):
  # mpt-7b on a CPU host: compiled (seconds, scanned layers), never allocated (its train state
  # alone is 74 GiB), where it used to grow until the kernel's OOM killer came.
  t0 = time.time()
  proc = jaxbench(["train", "--config=configs/mpt.py:7b", "--config.peak_tflops=1",
                   "--workdir=run"], tmp_path)
  line = one_line(proc, "memory_check", "the compiled step needs", "GiB of train state",
                  "this host has", "mesh.fsdp", "memory_check=False")
  assert time.time() - t0 < 300, line
  assert not (tmp_path / "run" / "run.json").exists()  # nothing written, nothing allocated


def test_fit_problem_names_what_to_change():
  gib = 2 ** 30
  analysis = {"argument_size_in_bytes": 10 * gib, "output_size_in_bytes": 10 * gib,
              "alias_size_in_bytes": 10 * gib, "temp_size_in_bytes": 6 * gib}
  from jaxbench import memory
  assert memory.fit_problem(analysis, 17 * gib, 1, "each device") is None
  assert memory.fit_problem(analysis, None, 1, "each device") is None  # nothing known: no verdict
  temps = memory.fit_problem(analysis, 12 * gib, 1, "each device")
  assert "16.00 GiB" in temps and "remat" in temps and "12.00 GiB" in temps
  state = memory.fit_problem(analysis, 30 * gib, 4, "this host (4 CPU devices' worth)")
  assert "64.00 GiB" in state and "mesh.fsdp" in state


# --- 6, 7. unwritable and full disks --------------------------------------------------------------

@needs_mounts
def test_read_only_workdir_and_checkpoints_exit_2_before_compiling(tmp_path):
  os.makedirs(tmp_path / "ro")
  os.makedirs(tmp_path / "run" / "checkpoints")
  proc = in_namespace(
      "mount -t tmpfs -o ro,size=1m tmpfs ro && mount -t tmpfs -o ro,size=1m tmpfs run/checkpoints"
      f" && {PY} --config.steps=3 --workdir=ro/run; echo rc=$?;"
      f" {PY} --config.steps=3 --config.checkpoint.every=1 --workdir=run; echo rc=$?;"
      f" {sys.executable} -m jaxbench sweep --sweep=configs/sweeps/cpu_tiny.py --out=ro/sweep;"
      " echo rc=$?", tmp_path)
  err = proc.stderr.strip().splitlines()
  assert proc.stdout.count("rc=2") == 3 and len(err) == 3, proc.stdout + proc.stderr
  assert "--workdir" in err[0] and "EROFS" in err[0]
  assert "checkpoint.every" in err[1] and "EROFS" in err[1]
  assert "--out" in err[2] and "EROFS" in err[2]


@needs_mounts
def test_checkpoints_turned_read_only_mid_run_fail_in_one_line_without_a_hang(tmp_path):
  os.makedirs(tmp_path / "run" / "checkpoints")
  t0 = time.time()
  proc = in_namespace(
      "mount -t tmpfs -o size=20m tmpfs run/checkpoints && "
      f"({PY} --config.steps=100000 --config.checkpoint.every=10 --workdir=run & "
      "while [ ! -d run/checkpoints/10 ]; do sleep 0.1; done; "
      "mount -o remount,ro run/checkpoints; wait $!; echo rc=$?; echo saved: $(ls run/checkpoints))",
      tmp_path)
  assert time.time() - t0 < 200, "waited on the failed save's threads"
  assert "rc=2" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
  line = proc.stderr.strip().splitlines()
  assert len(line) == 1 and "could not be written" in line[0] and "EROFS" in line[0], proc.stderr
  summary = read_json(tmp_path / "run" / "summary.json")
  saved = proc.stdout.split("saved:")[1].split()  # the checkpoints' tmpfs is gone with its namespace
  assert summary["status"] == "failed" and str(summary["last_checkpoint_step"]) in saved, saved


@needs_mounts
def test_a_full_disk_during_a_save_is_one_line_and_the_run_resumes_once_there_is_room(tmp_path):
  os.makedirs(tmp_path / "disk")
  args = "--config.steps=16 --config.checkpoint.every=4 --workdir=disk/run"
  proc = in_namespace(
      f"mount -t tmpfs -o size=3m tmpfs disk && {PY} {args}; echo rc=$?; "
      f"cp disk/run/summary.json failed.json; mount -o remount,size=64m disk && {PY} {args};"
      " echo rc=$?; cp disk/run/metrics.jsonl metrics.jsonl", tmp_path)
  assert "rc=2" in proc.stdout and "rc=0" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-3000:]
  err = proc.stderr.strip().splitlines()
  assert len(err) == 1, proc.stderr[-3000:]
  assert "could not be written" in err[0] and "ENOSPC" in err[0] and "disk" in err[0]
  assert "MiB free" in err[0] and "rerun the same command to resume from step" in err[0]
  failed = read_json(tmp_path / "failed.json")
  assert failed["status"] == "failed" and failed["last_checkpoint_step"] in (4, 8)
  assert f"resuming from the checkpoint of step {failed['last_checkpoint_step']}" in proc.stdout
  assert [s for s, _ in losses(tmp_path)] == list(range(1, 17))  # the tmpfs left with its namespace


# --- 8, 9, 10. config files, output paths, messages -------------------------------------------------

CONFIG_FILES = {
    "syntax.py": ("def get_config(\n", "SyntaxError"),
    "imports.py": ("import a_module_that_is_not_there\n", "ModuleNotFoundError"),
    "nothing.py": ("x = 1\n", "defines no get_config()"),
    "raises.py": ("def get_config(preset=None):\n  raise RuntimeError('nope')\n", "raised RuntimeError: nope"),
    "dict.py": ("def get_config(preset=None):\n  return {'steps': 3}\n", "returned a dict"),
    "notes.txt": ("steps = 3\n", "is not a Python file"),
}


@pytest.mark.parametrize("name", sorted(CONFIG_FILES))
def test_bad_config_files_are_bad_input(tmp_path, name):
  text, needle = CONFIG_FILES[name]
  (tmp_path / name).write_text(text)
  with pytest.raises(ConfigError) as e:
    config_lib.parse_flags(["jaxbench train", f"--config={tmp_path / name}"])
  assert e.value.key == "--config" and needle in str(e.value) and "\n" not in str(e.value)


def test_an_empty_preset_and_an_unknown_key_are_one_clean_line(tmp_path):
  proc = jaxbench(["train", "--config=configs/mpt.py:"], tmp_path)
  one_line(proc, "preset", "unknown mpt preset ''", "allowed: nano")
  proc = jaxbench(["train", "--config=syntax.py"], tmp_path)
  one_line(proc, "--config")
  proc = jaxbench(["train", "--config.stepz=3"], tmp_path)
  line = one_line(proc, "unknown config key 'stepz'", 'did you mean "steps"')
  assert "\\" not in line


def test_output_paths_are_checked_before_the_work(tmp_path, uninterrupted):
  (tmp_path / "a_file").write_text("x")
  proc = jaxbench(["export-hf", f"--workdir={uninterrupted}", "--out=a_file"], tmp_path)
  one_line(proc, "--out", "is a file")
  (tmp_path / "hf").mkdir()
  (tmp_path / "hf" / "config.json").write_text("{}")
  proc = jaxbench(["export-hf", f"--workdir={uninterrupted}", "--out=hf"], tmp_path)
  one_line(proc, "--out", "holds files already", "--overwrite")
  assert (tmp_path / "hf" / "config.json").read_text() == "{}"
  t0 = time.time()
  proc = jaxbench(["portability", "--config=configs/mpt.py:nano", "--platforms=cpu",
                   "--json=missing/report.json"], tmp_path)
  one_line(proc, "--json", "does not exist")
  proc = jaxbench(["compile", "--config=configs/mpt.py:nano", "--target=h100",
                   "--report=missing/report.json"], tmp_path)
  one_line(proc, "--report", "does not exist")
  proc = jaxbench(["compile", "--config=configs/mpt.py:nano", "--target=h100", "--dump=a_file"],
                  tmp_path)
  one_line(proc, "--dump", "is a file")
  assert time.time() - t0 < 120


def test_the_twins_state_that_cannot_fit_the_host_exits_2_before_it_is_made(tmp_path):
  pytest.importorskip("torch")
  t0 = time.time()
  proc = jaxbench(["train", "--config=configs/mpt.py:7b", "--config.framework=torch",
                   "--workdir=run"], tmp_path)
  one_line(proc, "memory_check", "the train state alone needs 99.20 GiB", "mesh.fsdp")
  assert time.time() - t0 < 120 and not (tmp_path / "run").exists()


@needs_mounts
def test_the_twins_save_on_a_full_disk_is_one_line(tmp_path):
  pytest.importorskip("torch")
  os.makedirs(tmp_path / "disk")
  proc = in_namespace(
      f"mount -t tmpfs -o size=2m tmpfs disk && {PY} --config.framework=torch --config.steps=12 "
      "--config.checkpoint.every=5 --workdir=disk/run; echo rc=$?", tmp_path)
  err = proc.stderr.strip().splitlines()
  assert "rc=2" in proc.stdout and len(err) == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert "could not be written" in err[0] and "MiB free" in err[0], err[0]
