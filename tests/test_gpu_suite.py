"""The GPU suite's logic, dry-run on the CPU with tiny sizes: batch choice from the memory model,
JAX and twin runs at the same batch, compare, suite.md / suite.json."""

import json
import os
import subprocess
import sys

import pytest

from conftest import NO_TORCH, REPO, cli_env

pytest.importorskip("torch", reason=NO_TORCH)
SUITE = os.path.join(REPO, "benchmarks", "gpu_suite.py")


def _script(path: str, name: str):
  """A benchmarks/ script (not a package module) loaded as a module."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


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


def test_compiled_batch_search_keeps_room_for_the_next_steps_temporaries(monkeypatch):
  suite = _script(SUITE, "gpu_suite")
  gib = 2**30
  # XLA's figures for mpt-1b on an H200 (benchmarks/RESULTS.md): state 14.7 GiB, temporaries
  # growing with the batch; batch 8 fits once (74 GiB) but not beside a second step's.
  temps = {1: 13.7, 2: 20.3, 4: 33.3, 8: 59.4, 16: 110.5}
  monkeypatch.setattr(suite, "compiled_bytes", lambda args, size, batches: {
      b: {"bytes": int((14.7 + temps[b]) * gib), "error": None,
          "with_next_step_bytes": int((14.7 + 2 * temps[b]) * gib)} for b in batches})
  monkeypatch.setattr(suite, "predicted_bytes", lambda args, flags: (0, 0))
  args = suite.parse_args(["--out=/tmp/x", "--batch_search=compile", "--max_batch=16"])
  batch, trail = suite.choose_batch(args, "1b", int(105.3 * gib))
  assert batch == 4 and [t["fits"] for t in trail] == [True, True, True, False]
  assert trail[-1]["compiled_bytes"] < 105.3 * gib  # it fits once: the search still says no


def test_tight_check_picks_the_batch_that_fits_once_but_not_twice():
  tight = _script(os.path.join(REPO, "benchmarks", "tight_check.py"), "tight_check")
  flags = ["--config=configs/mpt.py:1b", "--config.batch_size=4", "--config.steps=25",
           "--config.profile_steps=13:14", "--config.dump_hlo=True",
           "--config.warmup_steps_excluded=3"]
  suite = {"pool_bytes": 100, "results": [{"size": "1b", "runs": [
      {"framework": "jax", "flags": flags, "status": "oom", "batch_size": 8}], "batch_search": [
      {"batch_size": 4, "compiled_bytes": 50, "with_next_step_bytes": 80, "fits": True},
      {"batch_size": 8, "compiled_bytes": 75, "with_next_step_bytes": 135, "fits": False},
      {"batch_size": 16, "compiled_bytes": 125, "with_next_step_bytes": 235, "fits": False}]}]}
  cand = tight.tight_candidate(suite)
  assert (cand["size"], cand["batch_size"]) == ("1b", 8)
  assert tight.train_flags(cand["flags"], 8, 6) == [
      "--config=configs/mpt.py:1b", "--config.batch_size=8", "--config.steps=6",
      "--config.warmup_steps_excluded=2"]
  assert tight.tight_candidate({**suite, "pool_bytes": 200})["batch_size"] == 16
  assert tight.tight_candidate({"results": []}) is None


def test_variants_take_environment_and_config_settings():
  suite = _script(SUITE, "gpu_suite")
  args = suite.parse_args(["--out=/tmp/x", "--variant=jax-cublas:XLA_FLAGS=--xla_gpu_enable_triton_gemm=false",
                           "--variant=jax-unrolled:--config.model.scan_layers=False"])
  assert args.frameworks == "jax,torch,jax-cublas,jax-unrolled"
  assert args.variant_env["jax-cublas"] == ["XLA_FLAGS=--xla_gpu_enable_triton_gemm=false"]
  flags = suite.config_for(args, "125m", 8, "jax-unrolled")
  assert "--config.framework=jax" in flags and flags[-1] == "--config.model.scan_layers=False"
  assert "--config.model.scan_layers=False" not in suite.config_for(args, "125m", 8, "jax")
  with pytest.raises(SystemExit):
    suite.parse_args(["--out=/tmp/x", "--variant=jax-x:--bogus=1"])


def test_traced_runs_jax_with_its_hlo_and_the_twin_but_not_variants():
  suite = _script(SUITE, "gpu_suite")
  args = suite.parse_args(["--out=/tmp/x", "--profile_jax=10:11", "--profile_torch=10:12",
                           "--variant=jax-unrolled:--config.model.scan_layers=False"])
  jax_flags, torch_flags, variant_flags = (suite.config_for(args, "125m", 8, label)
                                           for label in ("jax", "torch", "jax-unrolled"))
  # 20 measured + 3 warm-up steps, and the most traced steps of any run on top (every run of a
  # size the same steps: the learning-rate schedule follows them), traced after the warm-up
  assert {"--config.steps=26", "--config.profile_steps=13:14",
          "--config.dump_hlo=True"} <= set(jax_flags)
  assert {"--config.steps=26", "--config.profile_steps=13:15"} <= set(torch_flags)
  assert not [f for f in torch_flags if f.startswith("--config.dump_hlo")]  # JAX only
  assert "--config.steps=26" in variant_flags
  assert not [f for f in variant_flags if f.startswith(("--config.profile", "--config.dump"))]
  with pytest.raises(SystemExit):
    suite.parse_args(["--out=/tmp/x", "--profile_torch=10"])


def test_table_gives_each_variant_against_the_twin_and_against_its_plain_run():
  suite = _script(SUITE, "gpu_suite")

  def run(framework, tokens, status="ok"):
    return {"framework": framework, "batch_size": 32, "status": status,
            "summary": {"tokens_per_s_per_device_median": tokens} if status == "ok" else None}

  results = [{"size": "125m", "n_params": 125e6, "batch_size": 32,
              "runs": [run("jax", 400.0), run("torch", 500.0), run("jax-dsfusion", 440.0),
                       run("jax-unrolled", 0, "oom")]}]
  notes = suite.table(results).split("\n\n")[1].splitlines()
  assert notes == [
      "- 125m at batch 32: JAX delivers 80% of the twin's (torch.compile) tokens/s per device",
      "- 125m at batch 32: JAX (jax-dsfusion) delivers 88% of the twin's (torch.compile) tokens/s "
      "per device",
      "- 125m at batch 32: jax-dsfusion runs at 110% of plain jax's tokens/s per device"]
  results[0]["runs"] = [run("jax", 0, "oom"), run("jax-dsfusion", 440.0)]
  assert suite.table(results).endswith("- no size has two runs ok")


def test_model_batch_search_walks_the_powers_of_two_with_the_sweeps_search(monkeypatch):
  suite = _script(SUITE, "gpu_suite")
  gib = 2**30
  # 1 GiB a sample: 0.75 * 0.85 of 100 GiB holds 63 samples, so batch 32 is the largest power.
  monkeypatch.setattr(suite, "predicted_bytes", lambda args, flags: (int(
      next(f for f in flags if f.startswith("--config.batch_size=")).split("=")[1]) * gib, 0))
  args = suite.parse_args(["--out=/tmp/x", "--max_batch=256"])
  batch, trail = suite.choose_batch(args, "125m", int(100 * gib * suite.JAX_POOL_FRACTION))
  assert batch == 32 and [t["batch_size"] for t in trail] == [1, 2, 4, 8, 16, 32, 64]
  assert [t["fits"] for t in trail] == [True] * 6 + [False]
  args = suite.parse_args(["--out=/tmp/x", "--min_batch=3", "--max_batch=100"])
  batch, trail = suite.choose_batch(args, "125m", int(1000 * gib))  # all fit: up to --max_batch
  assert batch == 96 and [t["batch_size"] for t in trail] == [3, 6, 12, 24, 48, 96]
  args = suite.parse_args(["--out=/tmp/x", "--min_batch=8", "--max_batch=8"])
  assert suite.choose_batch(args, "125m", gib)[0] == 8  # nothing fits: the smallest, as before


def test_a_run_goes_through_the_sweeps_runner_and_classifier(tmp_path):
  suite = _script(SUITE, "gpu_suite")
  workdir = str(tmp_path / "runs" / "nano-jax-b1")
  run = suite.train_process(["--config=configs/mpt.py:nano", "--config.no_such_key=1"], workdir,
                            timeout_s=120, platforms="cpu")
  assert run["status"] == "bad_config" and run["summary"] is None
  with open(run["log"]) as f:
    assert "jaxbench train" in f.readline() and "no_such_key" in f.read()
