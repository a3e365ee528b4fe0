"""The GPU suite's logic, dry-run on the CPU with tiny sizes: batch choice from the memory model,
JAX and twin runs at the same batch, compare, suite.md / suite.json."""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, cli_env

pytest.importorskip("torch")
SUITE = os.path.join(REPO, "benchmarks", "gpu_suite.py")


def test_suite_dry_run_on_cpu(tmp_path):
  out = tmp_path / "suite"
  proc = subprocess.run(
      [sys.executable, SUITE, f"--out={out}", "--sizes=nano", "--seq_len=64", "--dtype=float32",
       "--steps=2", "--warmup=1", "--memory_gib=0.02", "--max_batch=64", "--torch_compile=False",
       "--torch_init=jax", "--platforms=cpu", "--budget_s=400", "--timeout_s=200",
       "--config.peak_tflops=1"],
      cwd=str(tmp_path), env=cli_env(tmp_path), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  suite = json.loads((out / "suite.json").read_text())
  (r,) = suite["results"]
  # The batch is the largest power of two predicted to fit 85% of 75% of 0.02 GiB.
  trail = r["batch_search"]
  assert [t["fits"] for t in trail][:-1] == [True] * (len(trail) - 1)
  assert r["batch_size"] == max(t["batch_size"] for t in trail if t["fits"])
  assert r["batch_size"] < 64 and not trail[-1]["fits"]
  runs = {run["framework"]: run for run in r["runs"]}
  assert runs["jax"]["status"] == runs["torch"]["status"] == "ok"
  assert runs["jax"]["summary"]["n_params"] == runs["torch"]["summary"]["n_params"]
  assert r["compare"]["returncode"] == 0
  assert os.path.exists(os.path.join(r["compare"]["out"], "compare.md"))
  md = (out / "suite.md").read_text()
  assert "JAX delivers" in md and "| nano |" in md
