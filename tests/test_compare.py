"""`jaxbench compare`: two real runs, and copies of one edited to hold a known difference."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, cli_env, read_json, run_cli

from jaxbench import compare
from jaxbench import intervals

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
  """Two runs of one config, one after the other so the second reuses the first's compiled step
  from the tests' shared XLA cache; every other case is a copy of the first, edited."""
  tmp = tmp_path_factory.mktemp("runs")
  config = f"--config={os.path.join(REPO, 'configs', 'mpt.py')}:nano"
  for name in ("a", "b"):
    proc = run_cli(["train", config, "--config.steps=8", "--config.peak_tflops=1",
                    f"--workdir={tmp / name}"], tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
  return str(tmp / "a"), str(tmp / "b")


def copy_run(src, dst, run=None, summary=None, metric=None):
  """A copy of run dir `src` with its JSON edited in place by the given functions."""
  shutil.copytree(src, dst)
  for name, edit in (("run.json", run), ("summary.json", summary)):
    if edit:
      obj = read_json(os.path.join(dst, name))
      edit(obj)
      with open(os.path.join(dst, name), "w") as f:
        json.dump(obj, f)
  if metric:
    path = os.path.join(dst, "metrics.jsonl")
    records = [json.loads(line) for line in open(path)]
    with open(path, "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in map(metric, records) if r is not None)
  return str(dst)


def run_main(capsys, *args):
  code = compare.main(["jaxbench compare", *map(str, args)])
  out, err = capsys.readouterr()
  return code, out, err


def load(*paths):
  return [compare.load_run(p, label) for p, label in zip(paths, compare.default_labels(paths))]


def test_identical_configs_match_without_warnings(real_runs, capsys):
  code, out, err = run_main(capsys, *real_runs)
  assert code == 0 and "WARNING" not in err and "comparability warning" not in out
  result = compare.compare(load(*real_runs))
  assert result["warnings"] == []
  # Two runs of one config on one machine: nothing differs but, at most, the tree's git state.
  assert all(row["key"].startswith("git.") for row in result["diff"])
  b = result["runs"][1]
  assert b["loss_agreement"]["matching"] and b["loss_agreement"]["common_steps"] == 8
  # Two processes of one config on a shared CPU may or may not be told apart: either is said so,
  # with the interval, and what the interval leaves out (one run each).
  assert re.search(r"b (delivers \d+(\.\d)?% of a's per-device throughput \(95% interval "
                   r"|and a are not distinguishable in per-device throughput \(b at )", out), out
  assert "with matching loss curves (max relative difference 0.00% < 1% over 8 common steps)" in out
  assert "one run each: they leave out the noise from run to run" in out


def test_throughput_ratio_report_and_plots(real_runs, tmp_path, capsys):
  def halve(s):
    s["tokens_per_s_per_device_median"] /= 2
    s["step_time_s_median"] *= 2

  def slower(m):
    return {**m, "step_time_s": m["step_time_s"] * 2,
            "tokens_per_s_per_device": m["tokens_per_s_per_device"] / 2}

  def steady(m):  # step times 1% apart, not the loaded machine's (a noisy run is not distinguishable)
    t = 0.1 * (1 + 0.01 * (m["step"] % 3))
    return {**m, "step_time_s": t, "tokens_per_s_per_device": m["tokens_per_s_per_device"]
            * m["step_time_s"] / t}

  base = copy_run(real_runs[0], tmp_path / "a", metric=steady)
  slow = copy_run(real_runs[0], tmp_path / "slow", summary=halve, metric=lambda m: slower(steady(m)))
  out_dir = tmp_path / "report"
  code, out, err = run_main(capsys, base, slow, f"--out={out_dir}")
  assert code == 0, err
  base_tps = read_json(os.path.join(real_runs[0], "summary.json"))["tokens_per_s_per_device_median"]
  result = read_json(out_dir / "compare.json")
  slow_entry = result["runs"][1]
  assert slow_entry["throughput_ratio"] == 0.5 and result["runs"][0]["throughput_ratio"] == 1.0
  interval = slow_entry["throughput_ratio_interval"]
  assert interval["value"] == pytest.approx(0.5) and interval["low"] < 0.5 < interval["high"]
  assert interval["confidence"] == 0.95 and interval["steps"] == 5 and interval["repeats"] == 1
  assert slow_entry["distinguishable"] is True and result["runs"][0]["distinguishable"] is None
  value, bounds = intervals.percent_text(intervals.Interval.from_json(interval))
  headline = (f"slow delivers {value} of a's per-device throughput (95% interval {bounds}; "
              f"tokens/s/device {base_tps / 2:,.0f}")
  assert headline in out and result["headlines"][0].startswith(headline)
  md = (out_dir / "compare.md").read_text()
  assert headline in md and f"| vs baseline (95% interval) | 100% | {value} ({bounds}) |" in md
  for name in ("loss.png", "step_times.png", "throughput.png"):
    data = (out_dir / name).read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000, name
    assert f"![{name}]({name})" in md


def test_step_time_distribution_leaves_out_warmup(real_runs):
  (run,) = load(real_runs[0])
  summary = read_json(os.path.join(real_runs[0], "summary.json"))
  times = compare.timed_step_times(run)
  assert len(times) == summary["timed_steps"] == 8 - run.config("warmup_steps_excluded")


@pytest.mark.parametrize("factor,matching", [(1.005, True), (1.02, False)])
def test_loss_agreement_on_perturbed_losses(real_runs, tmp_path, factor, matching):
  def perturb(m):
    return {**m, "loss": m["loss"] * factor} if m["step"] <= 6 else None  # and two steps fewer

  other = copy_run(real_runs[0], tmp_path / "other", metric=perturb)
  result = compare.compare(load(real_runs[0], other))
  a = result["runs"][1]["loss_agreement"]
  assert a["common_steps"] == 6 and a["last_step"] == 6 and a["matching"] is matching
  assert a["max_rel_diff"] == pytest.approx(factor - 1, rel=1e-6)
  assert a["mean_rel_diff"] == pytest.approx(factor - 1, rel=1e-6)
  base_loss = {m["step"]: m["loss"] for m in load(real_runs[0])[0].metrics}
  assert a["final_loss_diff"] == pytest.approx(base_loss[6] * (factor - 1), rel=1e-6)
  expected = "with matching loss curves" if matching else "loss curves do NOT match"
  assert expected in result["headlines"][0] and "over 6 common steps" in result["headlines"][0]


def test_diff_lists_exactly_the_changed_keys(real_runs, tmp_path):
  def edit(r):
    r["device_kind"] = "TPU v4"
    r["versions"]["jax"] = "0.11.2"
    r["config"]["microbatches"] = 2

  other = copy_run(real_runs[0], tmp_path / "other", run=edit)
  result = compare.compare(load(real_runs[0], other))
  jax_version = read_json(os.path.join(real_runs[0], "run.json"))["versions"]["jax"]
  assert {row["key"]: row["values"] for row in result["diff"]} == {
      "device_kind": ["cpu", "TPU v4"], "versions.jax": [jax_version, "0.11.2"],
      "config.microbatches": [1, 2]}
  assert result["runs"][1]["differs_from_baseline"] == ["device_kind", "versions.jax",
                                                        "config.microbatches"]
  # The device and microbatches are what a study changes: diffed, not warned about; a release is
  # named (below).
  assert result["warnings"] == [f"other vs a: different releases (jax 0.11.2 vs {jax_version}): "
                                "the compiler and its kernels change between releases, so name "
                                "them with the result"]


def _set(path, value, **more):
  """An edit of run.json: `path` (dotted) set to `value`, and more dotted keys given as a__b=..."""
  def edit(r):
    for dotted, v in {path: value, **{k.replace("__", "."): v for k, v in more.items()}}.items():
      d = r
      *parents, last = dotted.split(".")
      for p in parents:
        d = d[p]
      d[last] = v
  return edit


@pytest.mark.parametrize("edit,needle", [
    (_set("config.model.n_layers", 3), "different model (model.n_layers 3 vs 2)"),
    (_set("config.family", "llama"), "different model (family llama vs mpt)"),
    (_set("n_params", 1), "different model (n_params 1 vs "),
    (_set("config.batch_size", 16), "different tokens per step (batch_size*seq_len: 1024 vs 512)"),
    # The same tokens per step in longer sequences: only seq_len differs.
    (_set("config.seq_len", 128, config__batch_size=4), "different seq_len (128 vs 64)"),
    (_set("config.dtype", "bfloat16"), "different precision (dtype) (bfloat16 vs float32)"),
    (_set("config.data.path", "/data/owt"), "different data (data.path /data/owt vs \"\")"),
    (_set("config.seed", 1), "different data (seed 1 vs 0)"),
    (_set("config.steps", 2000), "different steps (2000 vs "),
    (_set("config.warmup_steps_excluded", 0), "different warm-up steps left out of the timing (0 vs "),
    (_set("peak.source", "table"), "MFU against peaks of different kinds (table vs "),
    (_set("versions.jaxlib", "0.99.0"), "different releases (jaxlib 0.99.0 vs "),
])
def test_warns_when_runs_are_not_comparable(real_runs, tmp_path, capsys, edit, needle):
  other = copy_run(real_runs[0], tmp_path / "other", run=edit)
  code, out, err = run_main(capsys, real_runs[0], other)
  assert code == 0 and "1 comparability warning(s)" in out
  warnings = [line for line in err.splitlines() if "WARNING" in line]
  assert len(warnings) == 1 and f"WARNING: other vs a: {needle}" in warnings[0], err


def test_warnings_head_compare_md(real_runs, tmp_path, capsys):
  other = copy_run(real_runs[0], tmp_path / "other", run=_set("config.dtype", "bfloat16"))
  code, _, _ = run_main(capsys, real_runs[0], other, f"--out={tmp_path / 'report'}")
  md = (tmp_path / "report" / "compare.md").read_text()
  assert code == 0 and md.index("**WARNING** other vs a: different precision") < md.index("## Summary")
  assert read_json(tmp_path / "report" / "compare.json")["warnings"] == [
      "other vs a: different precision (dtype) (bfloat16 vs float32)"]


def test_warns_on_unfinished_run_and_says_why_mfu_is_unknown(real_runs, tmp_path, capsys):
  def failed(s):
    s["status"], s["mfu_median"] = "failed", None

  def no_peak(r):
    r["peak"] = {"tflops": None, "source": "unknown", "detail": "device kind 'X' is not in the table"}

  other = copy_run(real_runs[0], tmp_path / "other", run=no_peak, summary=failed)
  code, out, err = run_main(capsys, real_runs[0], other)
  assert code == 0 and "other: status is 'failed', not 'finished'" in err
  entry = compare.compare(load(real_runs[0], other))["runs"][1]
  assert entry["mfu"] is None and entry["mfu_text"] == "unknown (peak source unknown)"
  assert "not in the table" in entry["mfu_unknown_reason"]


def _run(label, framework, **versions):
  return compare.Run(label, label, {"config": {"framework": framework}, "versions": versions}, {}, [])


def test_release_warnings_name_the_frameworks_own_packages_only():
  old, new = _run("old", "jax", jax="0.10.2", jaxlib="0.10.2"), _run("new", "jax", jax="0.12.1",
                                                                       jaxlib="0.12.1")
  assert compare._release_changes(old, new) == ["jax 0.12.1 vs 0.10.2", "jaxlib 0.12.1 vs 0.10.2"]
  # The twin's runs: torch's release, not the jax that only made its data.
  twin_old = _run("t1", "torch", jax="0.10.2", torch="2.11.0")
  twin_new = _run("t2", "torch", jax="0.12.1", torch="2.13.0")
  assert compare._release_changes(twin_old, twin_new) == ["torch 2.13.0 vs 2.11.0"]
  # JAX against the twin is the study itself; a package one run did not record is not a difference.
  assert compare._release_changes(old, twin_new) == []
  assert compare._release_changes(old, _run("bare", "jax", jax="0.10.2")) == []


def test_collectives_side_by_side(real_runs, tmp_path, capsys):
  # One device: no collectives, no table.
  assert compare.compare(load(*real_runs))["collectives"] is None
  none = {"count": 0, "bytes": 0}
  xla = {"all-gather": {"count": 4, "bytes": 4096}, "reduce-scatter": none,
         "all-reduce": {"count": 2, "bytes": 2048}, "all-to-all": none, "collective-permute": none}
  issued = {"per_device": {"all-gather": none, "reduce-scatter": {"count": 1, "bytes": 512},
                           "all-reduce": {"count": 3, "bytes": 3072}, "broadcast": none},
            "step": 1, "source": "counted"}
  jax_run = copy_run(real_runs[0], tmp_path / "jax",
                     run=lambda r: (r["compile"].update(collectives=xla),
                                    r["config"]["model"].update(scan_layers=True)))
  twin_run = copy_run(real_runs[1], tmp_path / "torch", run=lambda r: r.update(collectives=issued))
  code, out, err = run_main(capsys, jax_run, twin_run, "--labels=jax,torch")
  assert code == 0
  rows = {line.split()[0]: line for line in out[out.index("collectives per device"):].splitlines()
          if line.strip()}
  assert rows["all-gather"].split()[1:] == ["4", "x,", "4.0", "KiB", "none"]
  assert rows["all-reduce"].split()[1:] == ["2", "x,", "2.0", "KiB", "3", "x,", "3.0", "KiB"]
  assert rows["reduce-scatter"].split()[1:] == ["none", "1", "x,", "512", "B"]
  assert rows["total"].split()[1:] == ["6", "x,", "6.0", "KiB", "4", "x,", "3.5", "KiB"]
  assert "XLA's compiled HLO" in rows["read"] and "calls issued in step 1" in rows["read"]
  # A scanned JAX step holds one layer's collectives: said, with what counts the whole step.
  assert "jax: XLA's HLO holds a loop body once (scan_layers)" in out
  table = compare.compare(load(jax_run, twin_run))["collectives"]
  assert table["kinds"] == ["all-gather", "all-reduce", "reduce-scatter"]
  assert [e["label"] for e in table["runs"]] == ["jax", "torch"]


def test_flatten_keeps_empty_dicts():
  assert compare.flatten({"a": {"b": 1, "c": {"d": 2}}, "e": {}}) == {"a.b": 1, "a.c.d": 2, "e": {}}


def _bad_json(tmp_path, src):
  path = copy_run(src, tmp_path / "broken")
  with open(os.path.join(path, "summary.json"), "w") as f:
    f.write("{not json")
  return [src, path], "broken/summary.json: not valid JSON"


def _missing(tmp_path, src):
  path = copy_run(src, tmp_path / "partial")
  os.unlink(os.path.join(path, "metrics.jsonl"))
  os.unlink(os.path.join(path, "summary.json"))
  return [src, path], "partial: not a run directory (missing summary.json, metrics.jsonl)"


@pytest.mark.parametrize("case", [
    lambda tmp, src: ([src], "need at least two run directories"),
    lambda tmp, src: ([src, str(tmp / "nowhere")], "nowhere: not a run directory (no such directory)"),
    _missing, _bad_json,
    lambda tmp, src: ([src, src, "--labels=x"], "--labels needs 2"),
    lambda tmp, src: ([src, src, "--bogus=1"], "unrecognized arguments: --bogus=1"),
    lambda tmp, src: ([src, src, "--loss_tolerance=-1"], "--loss_tolerance must be a positive"),
])
def test_bad_input_exits_2_with_one_line(real_runs, tmp_path, capsys, case):
  args, needle = case(tmp_path, real_runs[0])
  code, out, err = run_main(capsys, *args)
  assert code == 2 and out == ""
  assert err.count("\n") == 1 and err.startswith("jaxbench compare: bad input: ") and needle in err


def test_missing_matplotlib_names_the_extra(real_runs, tmp_path, capsys, monkeypatch):
  monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
  code, out, err = run_main(capsys, *real_runs, f"--out={tmp_path / 'report'}")
  assert code == 2 and "jaxbench[plots]" in err and err.count("\n") == 1
  assert not (tmp_path / "report").exists()


def test_module_entry_point(real_runs, tmp_path):
  proc = subprocess.run([sys.executable, "-m", "jaxbench.compare", real_runs[0]], cwd=str(tmp_path),
                        env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
  proc = subprocess.run([sys.executable, "-m", "jaxbench.compare", *real_runs], cwd=str(tmp_path),
                        env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0 and re.search(r"^b (delivers|and a are not distinguishable) ",
                                            proc.stdout, re.M), proc.stderr


def _measured_peak(tflops, load_avg, **more):
  def edit(r):
    r["peak"] = {"tflops": tflops, "source": "measured", "detail": "measured now", "conditions": {
        "measured_at": "2026-12-01T00:00:00+00:00", "machine": "boot-1", "cpu": "AMD EPYC",
        "cores": "0-1", "load_avg_1m": load_avg, "host_cpus": 2, "load_per_core": load_avg / 2,
        "platform": "cpu", "by_this_run": True, "age_s": 0.0, **more}}
  return edit


def test_warns_when_peaks_were_measured_under_different_conditions(real_runs, tmp_path, capsys):
  # issue #26: one cache said 0.186 TFLOP/s, a measurement under load 0.077, on the same machine.
  quiet = copy_run(real_runs[0], tmp_path / "quiet", run=_measured_peak(0.186, 0.2))
  busy = copy_run(real_runs[0], tmp_path / "busy", run=_measured_peak(0.077, 5.4))
  code, out, err = run_main(capsys, quiet, busy)
  (warning,) = [line for line in err.splitlines() if "WARNING" in line]
  assert code == 0 and "busy vs quiet: MFU against peaks measured under different conditions (" in warning
  assert "load average 5.4 vs 0.2 on 2 vs 2 cores: a busy machine and a quiet one" in warning
  assert "0.077 vs 0.186 TFLOP/s on one CPU model (2.42x apart" in warning
  # Two quiet measurements of about one figure: nothing to say.
  other = copy_run(real_runs[0], tmp_path / "other", run=_measured_peak(0.19, 0.3))
  assert compare.compare(load(quiet, other))["warnings"] == []
  # A run from before conditions were recorded, against one with them.
  old = copy_run(real_runs[0], tmp_path / "old", run=_set("peak", {"tflops": 0.19, "source": "measured",
                                                                  "detail": "cached"}))
  (warning,) = compare.compare(load(quiet, old))["warnings"]
  assert "the conditions of one were not recorded" in warning


def test_a_sweep_point_directory_brings_its_repeats(real_runs, tmp_path):
  # SWEEP/points/<id> with run/ and run-2/: the intervals are over both runs and their steps.
  point = tmp_path / "point"
  copy_run(real_runs[0], point / "run")
  copy_run(real_runs[1], point / "run-2")
  result = compare.compare(load(real_runs[0], str(point)))
  entry = result["runs"][1]
  assert entry["runs"] == 2 and entry["tokens_per_s_per_device_interval"]["repeats"] == 2
  assert entry["throughput_ratio_interval"]["steps"] == 10
  times = sum((compare.timed_step_times(r) for r in load(*real_runs)), [])
  assert entry["step_time_s_median"] == pytest.approx(float(np.median(times)))
  assert "a sweep point's repeats drawn first" in result["interval_rule"]
  assert "5 timed), 2 runs" in compare.format_terminal(result)
