"""Studies across sweeps (`jaxbench report A B ...`) and the report of any axis.

Sweeps written from synthetic records (known step times, so known ratios) test the matching, the
ratios, the one-sided points and the headlines in-process; one small end-to-end study of two real
sweeps (XLA_FLAGS standing in for a second machine) tests the commands."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, cli_env, read_json

from jaxbench import intervals
from jaxbench import report as report_lib
from jaxbench import study as study_lib
from jaxbench import sweep as sweep_lib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
N_PARAMS = {"nano": 246_080, "tiny": 1_117_568, "small": 10_000_000}


def write_point(sweep_dir, index, overrides, seconds, *, repeats=1, status="ok", seed=0,
                loss_scale=1.0, steps=30, dtype="float32", extra=None, framework="jax"):
  """One point of a synthetic sweep: its result lines and run directories (run.json, summary.json,
  metrics.jsonl with `steps` timed step times around `seconds`, 2% noise)."""
  preset = overrides.get("preset", "nano")
  batch = overrides.get("batch_size", 8)
  point_id = f"p{index}-" + ",".join(f"{k}={v}" for k, v in overrides.items())
  rng = np.random.default_rng(seed)
  for repeat in range(1, repeats + 1):
    run_dir = f"points/{point_id}/" + ("run" if repeat == 1 else f"run-{repeat}")
    result = {"id": point_id, "index": index, "repeat": repeat, "overrides": overrides,
              "status": status, "run_dir": run_dir, "preset": preset, "family": "mpt",
              "batch_size": batch, "dtype": dtype, "framework": framework, **(extra or {})}
    if status == "ok":
      path = os.path.join(sweep_dir, run_dir)
      os.makedirs(path)
      times = seconds * np.exp(rng.normal(0, 0.02, steps))
      work = batch * 64
      config = {"family": "mpt", "preset": preset, "batch_size": batch, "seq_len": 64,
                "dtype": dtype, "steps": steps, "warmup_steps_excluded": 0, "seed": 0,
                "framework": framework, "model": {"d_model": 64}, "data": {}, "optimizer": {}}
      with open(os.path.join(path, "run.json"), "w") as f:
        json.dump({"config": config, "n_devices": 1, "n_params": N_PARAMS[preset],
                   "peak": {"tflops": 1.0, "source": "override", "detail": ""}}, f)
      summary = {"status": "finished", "steps": steps, "timed_steps": steps,
                 "step_time_s_median": float(np.median(times)),
                 "tokens_per_s_per_device_median": work / float(np.median(times)),
                 "mfu_median": 0.01 / float(np.median(times)), "n_params": N_PARAMS[preset],
                 "n_devices": 1, "backend": "cpu", "device_kind": "cpu", "final_loss": 2.0}
      with open(os.path.join(path, "summary.json"), "w") as f:
        json.dump(summary, f)
      with open(os.path.join(path, "metrics.jsonl"), "w") as f:
        for step, t in enumerate(times, 1):
          f.write(json.dumps({"step": step, "loss": loss_scale * 5.0 / step, "step_time_s": t,
                              "timed": True}) + "\n")
      result.update({k: summary[k] for k in summary if k in sweep_lib.SUMMARY_FIELDS})
    else:
      result.update(reason="out of memory", error="RESOURCE_EXHAUSTED")
    sweep_lib.append_result(str(sweep_dir), result)


@pytest.fixture
def sweeps(tmp_path):
  """A: nano, tiny and (A only) small. B: nano and tiny, 1.25x A's step times (80% of its
  throughput), two runs each. C: A's speed (pure noise), its tiny out of memory."""
  a, b, c = (tmp_path / name for name in "ABC")
  for i, (preset, seconds) in enumerate((("nano", 0.010), ("tiny", 0.040), ("small", 0.2))):
    write_point(a, i, {"preset": preset}, seconds, seed=i)
  for i, (preset, seconds) in enumerate((("nano", 0.0125), ("tiny", 0.050))):
    write_point(b, i, {"preset": preset}, seconds, repeats=2, seed=10 + i, loss_scale=1.0001)
  write_point(c, 0, {"preset": "nano"}, 0.010, seed=20)
  write_point(c, 1, {"preset": "tiny"}, 0.040, status="oom")
  return str(a), str(b), str(c)


def test_study_matches_points_and_finds_the_ratios(sweeps):
  result = study_lib.study(study_lib.load_sides(list(sweeps)))
  assert result["baseline"] == "A" and result["match_keys"] == ["preset"]
  by_model = {r["values"]["preset"]: r for r in result["points"]}
  assert sorted(by_model) == ["nano", "tiny"]
  for preset in ("nano", "tiny"):
    b, c = by_model[preset]["ratios"]
    ratio = intervals.Interval.from_json(b["ratio"])
    assert ratio.low < 0.8 < ratio.high and ratio.high < 1.0 and b["distinguishable"] is True
    assert ratio.repeats == 2 and ratio.steps == 60  # B's two runs of 30 timed steps
    assert b["loss"]["matching"] and b["loss"]["max_rel_diff"] == pytest.approx(1e-4, rel=1e-3)
  nano_c = by_model["nano"]["ratios"][1]
  assert nano_c["distinguishable"] is False and nano_c["cell"].startswith("not distinguishable (")
  tiny_c = by_model["tiny"]["ratios"][1]
  assert tiny_c["ratio"] is None and tiny_c["cell"] == "n/a (C: oom)"
  assert by_model["tiny"]["sides"][2]["cell"] == "oom"
  # The point only A has is listed, not dropped.
  (only,) = result["one_sided"]
  assert (only["label"], only["values"], only["missing_from"]) == ("A", {"preset": "small"}, ["B", "C"])
  assert only["status"] == "ok" and only["tokens_per_s_per_device"] == pytest.approx(512 / 0.2, rel=0.05)
  assert result["warnings"] == []
  # B over the sizes, then B per size; C at the one size it has a ratio for.
  b_line, b_nano, b_tiny, c_line = result["headlines"]
  assert re.fullmatch(r"B delivers 7\d-8\d% of A's per-device throughput across MPT nano-tiny, "
                      r"loss curves within 1% \(largest difference 0\.01%\)", b_line), b_line
  assert re.match(r"B delivers [78]\d% \(95% interval [78]\d-[78]\d%\) of A's per-device "
                  r"throughput at MPT nano, ", b_nano), b_nano
  assert b_tiny.startswith("B delivers ") and " at MPT tiny, loss curves within 1%" in b_tiny
  assert c_line.startswith("C and A are not distinguishable in per-device throughput at MPT nano "
                           "(C at "), c_line


def test_study_baseline_labels_text_and_files(sweeps, tmp_path, capsys):
  out = tmp_path / "study"
  argv = ["jaxbench report", *sweeps, "--labels=a100,mi250,h100", "--baseline=mi250", f"--out={out}"]
  assert report_lib.main(argv) == 0
  text = capsys.readouterr().out
  assert "study of mi250, a100, h100 (baseline mi250); points matched by preset" in text
  assert "a100 delivers 12" in text and "of mi250's per-device throughput across MPT nano-tiny" in text
  assert "in some sweeps only:" in text and "mi250, h100" in text  # small: a100's only
  result = read_json(out / "study.json")
  assert [s["label"] for s in result["sweeps"]] == ["mi250", "a100", "h100"]
  md = (out / "study.md").read_text()
  assert "## Points in some sweeps only" in md and "| mi250 / a100 (95% interval)" not in md
  assert "| a100 / mi250 (95% interval) |" in md
  for name in ("ratio_vs_size.png", "throughput_vs_size.png"):
    assert (out / name).read_bytes()[:8] == PNG_SIGNATURE and f"![{name}]({name})" in md


@pytest.mark.parametrize("args, message", [
    (["--baseline=nope"], "--baseline=nope: not one of the sweeps' labels (A, B, C)"),
    (["--labels=x,y"], "--labels needs 3 distinct non-empty"),
    (["--labels=x,x,y"], "--labels needs 3 distinct non-empty"),
])
def test_study_bad_input_exits_2(sweeps, capsys, args, message):
  assert report_lib.main(["jaxbench report", *sweeps, *args]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and message in err, err


def test_one_sweep_with_study_flags_is_bad_input(sweeps, capsys):
  assert report_lib.main(["jaxbench report", sweeps[0], "--baseline=A"]) == 2
  assert "for a study of several sweeps" in capsys.readouterr().err


def test_report_puts_varied_keys_side_by_side(tmp_path):
  # issue #26: a sweep over framework x dtype wrote four one-row tables; now one row, four columns,
  # each with its ratio to the first, and grouped bars (no numeric axis varied).
  sweep_dir = str(tmp_path / "fw")
  speeds = {("jax", "float32"): 0.010, ("jax", "bfloat16"): 0.008, ("torch", "float32"): 0.0125,
            ("torch", "bfloat16"): 0.010}
  for i, ((framework, dtype), seconds) in enumerate(speeds.items()):
    write_point(sweep_dir, i, {"framework": framework, "dtype": dtype}, seconds, seed=i,
                dtype=dtype, framework=framework)
  rows = report_lib.load(sweep_dir)
  assert {r["group"] for r in rows} == {"cpu / cpu"}  # framework and dtype are columns, not groups
  text = "\n".join(report_lib.side_by_side(report_lib.measure_points(rows)))
  head = ("| group | model | batch | framework=jax, dtype=float32 | framework=jax, dtype=bfloat16 | "
          "framework=torch, dtype=float32 | framework=torch, dtype=bfloat16 |")
  assert head in text
  (line,) = [ln for ln in text.splitlines() if ln.startswith("| cpu / cpu | mpt:nano")][:1]
  cells = [c.strip() for c in line.strip("|").split("|")][3:]
  assert len(cells) == 4 and ";" not in cells[0]
  assert re.search(r"; 12\d% \(12\d-12\d%\)$", cells[1]), cells[1]  # 0.010 / 0.008 s
  assert re.search(r"; 8\d% \(\d\d-\d\d%\)$", cells[2]), cells[2]  # 0.010 / 0.0125 s
  assert re.search(r"; not distinguishable \(9\d-10\d%\)$", cells[3]), cells[3]
  plots = report_lib.write_plots(rows, str(tmp_path / "fw"))
  assert sorted(plots) == ["mfu_bars.png", "throughput_bars.png"]  # (no memory figures here)


def test_legends_name_only_what_differs():
  parts = [{"group": "jax / cpu", "dtype": "dtype=float32", "batch": "batch 8"},
           {"group": "jax / cpu", "dtype": "dtype=bfloat16", "batch": "batch 8"}]
  assert report_lib.legend_labels(parts) == (["dtype=float32", "dtype=bfloat16"], "jax / cpu, batch 8")


def test_report_of_repeats_gives_one_row_per_point(tmp_path):
  sweep_dir = str(tmp_path / "r")
  write_point(sweep_dir, 0, {"preset": "nano"}, 0.010, repeats=3)
  write_point(sweep_dir, 1, {"preset": "tiny"}, 0.040, repeats=3, seed=1)
  # The tiny point's fourth run: a timeout (a line of its own, as the sweep writes it).
  sweep_lib.append_result(sweep_dir, {"id": "p1-preset=tiny", "index": 1, "repeat": 4,
                                      "overrides": {"preset": "tiny"}, "status": "timeout",
                                      "run_dir": "points/p1-preset=tiny/run-4"})
  path, plots = report_lib.report(sweep_dir)
  text = open(path).read()
  assert "2 points (7 runs): 6 ok, 1 timeout." in text
  assert re.search(r"\| mpt:tiny \(1\.12M\) \| 8 \| 3/4 ok \| [\d,]+ \([\d,]+-[\d,]+\) \(3/4 runs "
                   r"finished\) \|", text), text
  assert "| p1-preset=tiny (run 4) | tiny | timeout |" in text
  assert re.search(r"\| mpt:nano \(0\.246M\) \| 8 \| 3/3 ok \| 5\d,\d\d0 \(5\d,\d\d0-5\d,\d\d0\) \|", text), text
  assert set(plots) == {"throughput_vs_size.png", "mfu_vs_size.png"}


# --- End to end: two real sweeps --------------------------------------------------------------------
NANO = os.path.join(REPO, "configs", "mpt.py") + ":nano"
# steps=8 and peak_tflops=1 as in test_compare: the same step, so the shared XLA cache serves it.
SWEEP_A = f'''
def get_sweep():
  return {{"base": "{NANO}", "fixed": {{"steps": 8, "peak_tflops": 1.0, "log_every": 0}},
          "repeats": 2}}
'''
# The second "machine": LLVM's expensive passes off (same numbers, other code; a flag every
# supported XLA knows: jax 0.12.1 dropped --xla_cpu_use_fusion_emitters, which this test used);
# and a point A does not have (batch 4).
SWEEP_B = f'''
def get_sweep():
  return {{"base": "{NANO}", "fixed": {{"steps": 8, "peak_tflops": 1.0, "log_every": 0,
                                        "env.XLA_FLAGS": "--xla_llvm_disable_expensive_passes=true"}},
          "axes": {{"batch_size": [8, 4]}}}}
'''


def test_study_of_two_real_sweeps(tmp_path):
  env = cli_env(tmp_path)
  for name, text in (("a", SWEEP_A), ("b", SWEEP_B)):
    (tmp_path / f"{name}.py").write_text(text)
    proc = subprocess.run([sys.executable, "-m", "jaxbench", "sweep", f"--sweep={name}.py",
                           f"--out={name}"], cwd=str(tmp_path), env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0 and "done: 2 ok" in proc.stderr, proc.stderr[-3000:]
  assert [(r["repeat"], r["run_dir"].split("/")[-1]) for r in
          sorted(sweep_lib.read_results(str(tmp_path / "a")).values(), key=lambda r: r["repeat"])] == [
              (1, "run"), (2, "run-2")]
  proc = subprocess.run([sys.executable, "-m", "jaxbench", "report", "a", "b", "--labels=A,B",
                         "--out=study"], cwd=str(tmp_path), env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0 and "WARNING" not in proc.stderr, proc.stderr[-3000:]
  result = read_json(tmp_path / "study" / "study.json")
  assert result["match_keys"] == ["batch_size"]
  (point,) = result["points"]
  assert point["values"] == {"batch_size": 8} and point["sides"][0]["runs"] == 2
  (ratio,) = point["ratios"]
  # The ratio is that of the pooled medians: A's two runs' timed steps against B's.
  def pooled(sweep, run_dirs):
    times = [m["step_time_s"] for d in run_dirs
             for m in map(json.loads, open(tmp_path / sweep / d / "metrics.jsonl")) if m.get("timed")]
    return float(np.median(times))
  a_dirs = [r["run_dir"] for r in sweep_lib.read_results(str(tmp_path / "a")).values()]
  b_dirs = [r["run_dir"] for r in sweep_lib.read_results(str(tmp_path / "b")).values()
            if r["overrides"]["batch_size"] == 8]
  assert ratio["ratio"]["value"] == pytest.approx(pooled("a", a_dirs) / pooled("b", b_dirs))
  assert ratio["ratio"]["low"] <= ratio["ratio"]["value"] <= ratio["ratio"]["high"]
  assert ratio["loss"]["matching"] and ratio["loss"]["common_steps"] == 8
  (only,) = result["one_sided"]
  assert only["label"] == "B" and only["values"] == {"batch_size": 4} and only["status"] == "ok"
  assert re.search(r"^B (delivers|and A are not distinguishable in per-device throughput at MPT "
                   r"nano at batch_size=8 \(B at)", result["headlines"][0]), result["headlines"]
  assert "loss curves within 1%" in result["headlines"][0]
  assert (tmp_path / "study" / "ratio_bars.png").read_bytes()[:8] == PNG_SIGNATURE
  assert "in some sweeps only:" in proc.stdout


def test_the_shipped_study_sweep_builds():
  from jaxbench import sweepfile
  sweep = sweepfile.build(os.path.join(REPO, "configs", "sweeps", "cpu_study.py"))
  assert sweep.repeats == 3 and [p.overrides["preset"] for p in sweep.points] == ["nano", "tiny"]
