"""Across the JAX releases setup.cfg admits: a run checkpointed by the oldest stack resumes on this
one; what one release broke stays fixed.

tests/fixtures/oldest_stack_run/ was written by CI's oldest environment (Python 3.11, jax/jaxlib
0.10.2, orbax-checkpoint 0.12.8; tests/fixtures/make_oldest_stack_run.py): stopped by SIGTERM at
step 5, with checkpoints of steps 4 and 5, and the loss curve of the same run uninterrupted.
"""

import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO, cli_env, read_json, run_cli, spawn

from jaxbench import rundir

FIXTURE = os.path.join(REPO, "tests", "fixtures", "oldest_stack_run")


def test_a_run_checkpointed_by_the_oldest_stack_resumes_here(tmp_path):
  made = read_json(os.path.join(FIXTURE, "reference_losses.json"))
  stopped = read_json(os.path.join(FIXTURE, "run", "summary.json"))
  assert stopped["status"] == "stopped (SIGTERM)" and stopped["steps"] == 5
  shutil.copytree(os.path.join(FIXTURE, "run"), tmp_path / "run")
  proc = run_cli(["train", *made["args"], "--workdir=run"], tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resuming from the checkpoint of step 5" in proc.stdout, proc.stdout[-3000:]
  records = rundir.read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
  assert [r["step"] for r in records] == list(range(1, 9))
  losses = [r["loss"] for r in records]
  kept = [r["loss"] for r in rundir.read_metrics(os.path.join(FIXTURE, "run", "metrics.jsonl"))]
  assert losses[:5] == kept == made["losses"][:5]
  # The steps after the restart continue the oldest stack's curve: the same parameters and AdamW
  # state were read back (another XLA may round the step differently, hence not bitwise).
  np.testing.assert_allclose(losses[5:], made["losses"][5:], rtol=1e-5)
  summary = read_json(tmp_path / "run" / "summary.json")
  assert summary["status"] == "finished" and summary["resumed_from_step"] == 5
  info = read_json(tmp_path / "run" / "run.json")
  assert info["versions"]["jax"] == jax.__version__
  if jax.__version__ != made["versions"]["jax"]:  # the summary times only this release's steps
    assert summary["timed_since_step"] == 5
    assert f"versions.jax {made['versions']['jax']} -> {jax.__version__}" in summary["timing_note"]


def test_a_multi_process_cpu_run_from_a_warm_compilation_cache_finishes(tmp_path):
  """Two runs of two processes, one after the other, sharing a fresh persistent compilation
  cache: on jax 0.12.1 the second, its step loaded from the cache by process 0, waited forever in
  its first all-reduce (compat.compilation_cache_hang); the cache is now left off there."""
  from test_distributed import LAUNCH, TRAIN, free_port, wait_for_stop

  from jaxbench import compat
  hang = compat.compilation_cache_hang("cpu", 2)
  if hang is None:  # 40 s of CI's oldest environment, on a release that runs from the cache
    pytest.skip(f"jax {jax.__version__} does not hang with the cache (compat.compilation_cache_hang)")
  env = cli_env(tmp_path, JAXBENCH=f"{sys.executable} -m jaxbench",
                JAX_COMPILATION_CACHE_DIR=str(tmp_path / "xla-cache"))
  env.pop("XLA_FLAGS", None)
  for name in ("cold", "warm"):
    proc = spawn(["bash", LAUNCH, "--backend=cpu", "--local_processes=2", "--devices_per_process=1",
                  f"--port={free_port()}", "--", *TRAIN, f"--workdir={name}"], cwd=tmp_path,
                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                 start_new_session=True)
    _, err = wait_for_stop(proc, timeout=240)
    assert proc.returncode == 0, err[-3000:]
    assert read_json(tmp_path / name / "summary.json")["status"] == "finished"
  note = read_json(tmp_path / "warm" / "run.json")["distributed"]
  assert f"persistent compilation cache off: {hang}" in note
