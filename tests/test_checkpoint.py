"""Checkpoints and faults: exact resume, resharding on restore, SIGTERM, kill -9, bad checkpoints."""

import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

import pytest
from conftest import spawn, cli_env, read_json

from jaxbench import rundir

NANO = ["train", "--config=configs/mpt.py:nano", "--config.peak_tflops=1", "--config.log_every=1"]


def start(args, tmp_path, **env):
  return spawn([sys.executable, "-m", "jaxbench", *NANO, *args], cwd=tmp_path,
                          env=cli_env(tmp_path, **env), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


def train(args, tmp_path, **env):
  return subprocess.run([sys.executable, "-m", "jaxbench", *NANO, *args], cwd=tmp_path,
                        env=cli_env(tmp_path, **env), capture_output=True, text=True, timeout=600)


def wait_for_step(proc, step, total):
  deadline = time.time() + 300
  for line in proc.stdout:
    if line.startswith(f"step {step:>{len(str(total))}}/{total}"):
      return
    assert time.time() < deadline, "no progress"
  raise AssertionError(f"process ended before step {step}: {proc.stderr.read()[-2000:]}")


def losses(run_dir):
  records = rundir.read_metrics(str(run_dir / "metrics.jsonl"))
  return [r["step"] for r in records], [r["loss"] for r in records]


def steps_saved(run_dir):
  return sorted(int(n) for n in os.listdir(run_dir / "checkpoints") if n.isdigit())


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted 24-step run with a checkpoint every 4 steps (the last 3 kept)."""
  tmp = tmp_path_factory.mktemp("reference")
  proc = train(["--config.steps=24", "--config.checkpoint.every=4", "--workdir=ref"], tmp)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return tmp / "ref"


def test_kill_9_then_resume_is_bitwise_equal(tmp_path, reference):
  proc = start(["--config.steps=24", "--config.checkpoint.every=4", "--workdir=run"], tmp_path)
  wait_for_step(proc, 5, 24)
  deadline = time.time() + 120
  while not (tmp_path / "run" / "checkpoints" / "4").exists() and proc.poll() is None:
    assert time.time() < deadline
    time.sleep(0.05)
  proc.kill()  # SIGKILL: no handler runs
  proc.wait()
  assert steps_saved(tmp_path / "run")
  again = train(["--config.steps=24", "--config.checkpoint.every=4", "--workdir=run"], tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resuming from the checkpoint of step" in again.stdout
  steps, resumed = losses(tmp_path / "run")
  assert steps == list(range(1, 25))  # no duplicates, no gaps
  assert resumed == losses(reference)[1]  # bitwise: the same floats
  summary = read_json(tmp_path / "run" / "summary.json")
  assert summary["status"] == "finished" and summary["steps"] == 24 and summary["resumed_from_step"] >= 4


def test_sigterm_saves_and_the_rerun_resumes_from_that_step(tmp_path, reference):
  proc = start(["--config.steps=24", "--config.checkpoint.every=100", "--workdir=run"], tmp_path)
  wait_for_step(proc, 5, 24)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-2000:]
  assert "saved a checkpoint of step" in out
  stopped = read_json(tmp_path / "run" / "summary.json")
  assert stopped["status"] == "stopped (SIGTERM)"
  assert steps_saved(tmp_path / "run") == [stopped["steps"]] == [stopped["last_checkpoint_step"]]
  again = train(["--config.steps=24", "--config.checkpoint.every=100", "--workdir=run"], tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"resuming from the checkpoint of step {stopped['steps']}" in again.stdout
  assert losses(tmp_path / "run") == losses(reference)
  # The summary times both segments, each without its first warmup_steps_excluded (3) steps.
  records = rundir.read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
  timed = [r for r in records if r["timed"]]
  assert [r["step"] for r in timed] == [*range(4, stopped["steps"] + 1),
                                        *range(stopped["steps"] + 4, 25)]
  summary = read_json(tmp_path / "run" / "summary.json")
  assert summary["timed_steps"] == len(timed) and summary.get("timed_since_step", 0) == 0
  assert summary["step_time_s_median"] == pytest.approx(
      statistics.median(r["step_time_s"] for r in timed))
  from jaxbench import compare
  assert compare.timed_step_times(compare.load_run(str(tmp_path / "run"), "run")) == [
      r["step_time_s"] for r in timed]


def test_a_stopped_run_without_checkpoints_starts_again(tmp_path, reference):
  proc = start(["--config.steps=24", "--workdir=run"], tmp_path)
  wait_for_step(proc, 5, 24)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-2000:]
  stopped = read_json(tmp_path / "run" / "summary.json")
  assert stopped["status"] == "stopped (SIGTERM)" and not (tmp_path / "run" / "checkpoints").exists()
  again = train(["--config.steps=24", "--workdir=run"], tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  assert (f"the earlier start of this run got to step {stopped['steps']} (stopped (SIGTERM)) with "
          "no checkpoint to resume from: starting again from step 0") in again.stdout
  assert losses(tmp_path / "run") == losses(reference)  # steps 1..24 once each, the same floats
  restarted = read_json(tmp_path / "run" / "run.json")["restarted"]
  assert restarted["earlier_steps"] == stopped["steps"]
  assert read_json(tmp_path / "run" / "summary.json")["status"] == "finished"
  # Finished: started again, nothing to do and nothing changed; with another config, exit 2.
  before = {name: (tmp_path / "run" / name).read_bytes()
            for name in ("run.json", "summary.json", "metrics.jsonl")}
  done = train(["--config.steps=24", "--workdir=run"], tmp_path)
  assert done.returncode == 0 and "already finished its 24 steps" in done.stdout, done.stderr[-2000:]
  other = train(["--config.steps=24", "--config.seed=1", "--workdir=run"], tmp_path)
  assert other.returncode == 2 and "seed" in other.stderr and "new --workdir" in other.stderr
  # Its summary would not measure another remat either.
  other = train(["--config.steps=24", "--config.model.remat=full", "--workdir=run"], tmp_path)
  assert other.returncode == 2 and "model.remat" in other.stderr, other.stderr[-2000:]
  assert before == {name: (tmp_path / "run" / name).read_bytes() for name in before}


def killed_during_the_last_save(reference, tmp_path):
  """The reference run as a kill during its last save leaves it: no checkpoint 24, no summary."""
  run = tmp_path / "run"
  shutil.copytree(reference, run)
  shutil.rmtree(run / "checkpoints" / "24")
  (run / "summary.json").unlink()
  return run


def test_unfinished_checkpoint_is_ignored(tmp_path, reference):
  run = killed_during_the_last_save(reference, tmp_path)
  # What a process killed mid-save leaves: Orbax's temporary directory, never renamed.
  shutil.copytree(run / "checkpoints" / "20", run / "checkpoints" / "24.orbax-checkpoint-tmp-1700000000")
  proc = train(["--config.steps=24", "--config.checkpoint.every=4", "--workdir=run"], tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resuming from the checkpoint of step 20" in proc.stdout
  assert losses(run) == losses(reference)


def test_kill_9_during_saves_leaves_a_usable_checkpoint(tmp_path):
  # A checkpoint every step, killed at once: a save is almost always in flight.
  proc = start(["--config.steps=40", "--config.checkpoint.every=1", "--workdir=run"], tmp_path)
  wait_for_step(proc, 8, 40)
  proc.kill()
  proc.wait()
  again = train(["--config.steps=40", "--config.checkpoint.every=1", "--workdir=run"], tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  assert "resuming from the checkpoint of step" in again.stdout


def test_divergence_keeps_the_last_good_checkpoint(tmp_path):
  proc = train(["--config.steps=10", "--config.checkpoint.every=1", "--config.optimizer.lr=1e30",
                "--config.optimizer.warmup_steps=0", "--workdir=run"], tmp_path)
  assert proc.returncode == 3, proc.stderr[-2000:]
  diverged_at = read_json(tmp_path / "run" / "summary.json")["steps"]
  assert f"diverged at step {diverged_at}" in proc.stderr
  assert steps_saved(tmp_path / "run")[-1] == diverged_at - 1


def test_unreadable_checkpoint_exits_2(tmp_path, reference):
  run = killed_during_the_last_save(reference, tmp_path)
  for root, _, files in os.walk(run / "checkpoints" / "20"):
    for name in files:
      with open(os.path.join(root, name), "wb") as f:
        f.write(b"garbage")
  before = {name: (run / name).read_bytes() for name in ("run.json", "metrics.jsonl")}
  proc = train(["--config.steps=24", "--config.checkpoint.every=4", "--workdir=run"], tmp_path)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "cannot read the checkpoint of step 20" in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1 and "<" not in proc.stderr
  # Nothing of the run directory changed: a failed resume loses nothing.
  assert before == {name: (run / name).read_bytes() for name in before}


def test_corrupt_arrays_with_readable_meta_exit_2_and_change_nothing(tmp_path, reference):
  run = killed_during_the_last_save(reference, tmp_path)
  state_dir = run / "checkpoints" / "20" / "state"
  for root, _, files in os.walk(state_dir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "r+b") as f:
        f.truncate(max(0, os.path.getsize(path) // 3))
  before = {name: (run / name).read_bytes() for name in ("run.json", "metrics.jsonl")}
  proc = train(["--config.steps=24", "--config.checkpoint.every=4", "--workdir=run"], tmp_path)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "cannot read the checkpoint of step 20" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
  assert before == {name: (run / name).read_bytes() for name in before}


def test_incompatible_config_exits_2(tmp_path, reference):
  run = tmp_path / "run"
  shutil.copytree(reference, run)
  proc = train(["--config.steps=24", "--config.model.d_model=128", "--workdir=run"], tmp_path)
  assert proc.returncode == 2 and "model.d_model" in proc.stderr, proc.stderr[-2000:]
  # The learning-rate schedule is a function of steps: changing it would silently change the run.
  longer = train(["--config.steps=48", "--workdir=run"], tmp_path)
  assert longer.returncode == 2 and "steps" in longer.stderr, longer.stderr[-2000:]
  # A finished run started again: nothing to do, its files unchanged (a sweep stopped between a
  # point's end and its result line reruns it so). Without a finished summary: exit 2.
  before = {name: (run / name).read_bytes() for name in ("run.json", "summary.json", "metrics.jsonl")}
  done = train(["--config.steps=24", "--workdir=run"], tmp_path)
  assert done.returncode == 0 and "already finished its 24 steps: nothing to do" in done.stdout
  assert before == {name: (run / name).read_bytes() for name in before}
  (run / "summary.json").unlink()
  done = train(["--config.steps=24", "--workdir=run"], tmp_path)
  assert done.returncode == 2 and "already reached its last step (24)" in done.stderr


def test_restore_onto_another_mesh_gives_the_same_next_loss(tmp_path):
  eight = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  base = ["--config.model.n_heads=8", "--config.model.n_kv_heads=8", "--config.model.d_ff=256",
          "--config.checkpoint.every=3", "--config.warmup_steps_excluded=0", "--config.steps=4"]
  fsdp8 = ["--config.mesh.data=1", "--config.mesh.fsdp=8"]
  straight = train([*base, *fsdp8, "--workdir=straight"], tmp_path, **eight)
  assert straight.returncode == 0, straight.stderr[-3000:]
  expected = losses(tmp_path / "straight")[1][3]
  # The run as it was after step 3: its checkpoint of step 3, its metrics up to step 3.
  shutil.copytree(tmp_path / "straight", tmp_path / "saved")
  shutil.rmtree(tmp_path / "saved" / "checkpoints" / "4")
  (tmp_path / "saved" / "summary.json").unlink()
  assert steps_saved(tmp_path / "saved") == [3]
  for name, args, env in [("fsdp4_tensor2", ["--config.mesh.data=1", "--config.mesh.fsdp=4",
                                             "--config.mesh.tensor=2"], eight),
                          ("one_device", [], {})]:
    shutil.copytree(tmp_path / "saved", tmp_path / name)
    proc = train([*base, *args, f"--workdir={name}"], tmp_path, **env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from the checkpoint of step 3" in proc.stdout
    steps, values = losses(tmp_path / name)
    assert steps == [1, 2, 3, 4]
    assert abs(values[3] - expected) <= 1e-5 * abs(expected), (name, values[3], expected)
    # Another mesh times differently: the summary covers the steps since the restart, and says so.
    summary = read_json(tmp_path / name / "summary.json")
    assert summary["timed_since_step"] == 3 and summary["timed_steps"] == 1
    change = "mesh.fsdp 8 -> 4" if name == "fsdp4_tensor2" else "n_devices 8 -> 1"
    assert change in summary["timing_note"], summary["timing_note"]


def test_a_failed_last_save_still_writes_the_summary(tmp_path, monkeypatch):
  # A save that fails in the background (a full disk) surfaces when the checkpointer closes: the
  # run still writes summary.json, saying the run failed and why, then raises.
  from jaxbench import checkpoint as checkpoint_lib
  from jaxbench import config as config_lib
  from jaxbench import train as train_lib
  c = config_lib.load_with_overrides("configs/mpt.py:nano", {
      "steps": 4, "checkpoint.every": 2, "peak_tflops": 1.0, "log_every": 0,
      "warmup_steps_excluded": 0})

  real_close = checkpoint_lib.Checkpointer.close

  def close(self):
    real_close(self)  # its threads end; then the failure a background save would report
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(checkpoint_lib.Checkpointer, "close", close)
  with pytest.raises(OSError, match="No space left"):
    train_lib.run(c, str(tmp_path / "run"))
  summary = read_json(tmp_path / "run" / "summary.json")
  assert summary["status"] == "failed" and "No space left on device" in summary["error"]
  assert summary["steps"] == 4


def test_a_failed_dispatch_after_a_save_keeps_the_saved_step_and_tensorboard_replays(
    tmp_path, monkeypatch):
  # Dispatching the step after a save fails (as a device error would surface, with steps
  # dispatched ahead: the GPU's loop): the saved step's metrics line is written all the same, and
  # the resumed run's TensorBoard file holds every step once.
  from conftest import read_events
  from jaxbench import config as config_lib
  from jaxbench import hostalloc
  from jaxbench import train as train_lib
  c = config_lib.load_with_overrides("configs/mpt.py:nano", {
      "steps": 8, "checkpoint.every": 4, "peak_tflops": 1.0, "log_every": 0,
      "warmup_steps_excluded": 0, "tensorboard": True})
  monkeypatch.setattr(hostalloc, "cpu_dispatch_async", lambda: True)
  real_dispatch = train_lib.JaxEngine.dispatch

  def dispatch(self, state, batch, step):
    if step == 5:
      raise RuntimeError("device lost")
    return real_dispatch(self, state, batch, step)

  monkeypatch.setattr(train_lib.JaxEngine, "dispatch", dispatch)
  with pytest.raises(RuntimeError, match="device lost"):
    train_lib.run(c, str(tmp_path / "run"))
  assert losses(tmp_path / "run")[0] == [1, 2, 3, 4] and steps_saved(tmp_path / "run") == [4]
  failed = read_json(tmp_path / "run" / "summary.json")
  assert failed["status"] == "failed" and failed["steps"] == 4 and "device lost" in failed["error"]
  monkeypatch.setattr(train_lib.JaxEngine, "dispatch", real_dispatch)
  summary = train_lib.run(c, str(tmp_path / "run"))
  assert summary["status"] == "finished" and summary["timed_steps"] == 8
  records = rundir.read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
  assert [r["step"] for r in records] == list(range(1, 9))
  events = [e for path in (tmp_path / "run").glob("events.out.tfevents.*") for e in read_events(path)]
  assert sorted(step for step, tag, _ in events if tag == "loss") == list(range(1, 9))  # once each
  scalars = {(step, tag): value for step, tag, value in events}
  for r in records:
    assert scalars[(r["step"], "loss")] == pytest.approx(r["loss"], rel=1e-6)
