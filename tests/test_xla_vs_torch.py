"""benchmarks/xla_vs_torch.py: its round-by-round ratios, and one tiny run of it on the CPU."""

import json
import os
import subprocess
import sys

import pytest

from conftest import NO_TORCH, REPO, cli_env

SCRIPT = os.path.join(REPO, "benchmarks", "xla_vs_torch.py")


def _module():
  import importlib.util
  spec = importlib.util.spec_from_file_location("xla_vs_torch", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _run(mode, tokens_per_s):
  return {"mode": mode, "tokens_per_s_per_device": tokens_per_s, "mfu": 0.5, "compile_s": 1.0,
          "final_loss": 2.0}


def test_ratios_are_paired_by_round():
  m = _module()
  # Round 2 is a slow spell for every mode: the medians' ratio and the paired ones differ.
  per_round = {"jax": [100, 60, 110], "torch-eager": [90, 50, 120], "torch-compile": [95, 66, 100]}
  runs = [_run(mode, per_round[mode][r]) for r in range(3) for mode in per_round]
  rows = m.summarize(runs, list(per_round))
  eager = rows[1]
  assert eager["ratio_to_first"] == pytest.approx(90 / 100)
  assert eager["paired_ratios"] == pytest.approx([0.9, 50 / 60, 120 / 110])
  best = m.against_best_twin(rows)
  assert best["ratios"] == pytest.approx([100 / 95, 60 / 66, 110 / 120])
  assert best["median"] == pytest.approx(110 / 120)
  text = "\n".join(m.table(rows, "jax"))
  assert "| 0.90x | 0.90x (0.83-1.09x) |" in text
  assert "jax against the faster twin mode of each round: 0.92x (0.91-1.05x)" in text
  # No twin mode, or a twin first: no such line.
  assert m.against_best_twin(rows[:1]) is None
  assert m.against_best_twin(m.summarize(runs, ["torch-eager", "jax"])) is None
  assert m.paired_text([1.234]) == "1.23x"


def test_tiny_run_writes_results(tmp_path):
  pytest.importorskip("torch", reason=NO_TORCH)
  out = tmp_path / "xvt"
  proc = subprocess.run(
      [sys.executable, SCRIPT, "--config=configs/mpt.py:nano", "--rounds=1", "--steps=3",
       "--warmup_steps_excluded=1", "--modes=jax,torch-eager", f"--out={out}", "--",
       "--config.batch_size=2"],
      cwd=REPO, env=cli_env(tmp_path), capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "jax against the faster twin mode of each round:" in proc.stdout
  results = json.loads((out / "results.json").read_text())
  assert [r["mode"] for r in results["rows"]] == ["jax", "torch-eager"]
  assert results["against_best_twin"]["ratios"][0] > 0
  assert (out / "round1-jax" / "summary.json").exists()
