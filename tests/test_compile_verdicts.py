"""`jaxbench compile`'s verdicts: exit codes per verdict (the worst of several targets), the
roofline line, one warning per cause, and the search for the cheapest change that fits.

Most tests fake the compile (a report whose temporaries follow the config); one compiles for real
for a description with a pool of a few MiB (it needs the `cuda-aot` extra)."""

import os
import re
import subprocess
import sys

import pytest

from conftest import REPO, cli_env
from jaxbench import compile as compile_lib
from jaxbench.errors import ConfigError

HAVE_AOT = compile_lib.plugin_problem("cuda") is None
MIB = 2**20


def fake_report(name="small", microbatches=1, remat="none", data=1, fsdp=1, batch_size=8,
                state=3 * MIB, temp=8 * MIB, memory_bytes=12 * MIB, compiled=True):
  """A report as compile_report makes it, for a step whose temporaries shrink with microbatches
  (halved each doubling) and full remat (halved) and whose state shrinks with fsdp."""
  temp = temp / microbatches / (2 if remat == "full" else 1)
  state = state / fsdp

  class Analysis:
    argument_size_in_bytes = output_size_in_bytes = alias_size_in_bytes = int(state)
    temp_size_in_bytes, generated_code_size_in_bytes = int(temp), 0

  r = {"target": {"name": name, "device": "NVIDIA H100 80GB HBM3", "platform": "cuda",
                  "arch": "sm_90a", "dropped_fields": []},
       "config": {"family": "mpt", "preset": "nano", "dtype": "float32", "batch_size": batch_size,
                  "microbatches": microbatches, "seq_len": 64, "remat": remat,
                  "scan_layers": True, "mesh": {"data": data, "fsdp": fsdp, "tensor": 1}},
       "attention": {"implementation": "xla", "reason": "test"}, "n_params": 2e5,
       "topology": f"1x1x{data * fsdp}", "n_devices": data * fsdp, "processes": 1,
       "jax": "test", "lower_s": 0.5, "compile_s": 1.5, "compiled": compiled}
  if not compiled:
    return {**r, "error": "XlaRuntimeError: rejected"}
  memory = compile_lib.memory_report(Analysis, memory_bytes, 0.75)
  r.update({"memory": memory, "kernels": {}, "collectives": {},
            "peak": {"tflops": 494.7, "source": "table", "detail": "test"},
            "roofline": compile_lib.roofline(
                model_flops=4e8, xla={}, has_loops=False, has_library_gemms=False, memory=memory,
                peak_tflops=494.7, bandwidth=3.35e12,
                peak_assumption=compile_lib.peak_assumption("float32"))})
  return r


def report_for(pool_mib, **config):
  """fake_report with a pool of `pool_mib` MiB."""
  return fake_report(memory_bytes=int(pool_mib * MIB / 0.75), **config)


# --- verdicts and exit codes ----------------------------------------------------------------------

def test_each_verdict_has_its_exit_code_and_several_targets_exit_with_the_worst():
  fits = report_for(100)  # 3 + 8 + 8 MiB with the next step's temporaries: room for both
  tight = report_for(15)  # 11 MiB once, 19 with the next step's temporaries
  short = report_for(10)
  rejected = fake_report(compiled=False)
  unknown = fake_report(memory_bytes=None)
  assert [compile_lib.verdict(r) for r in (fits, tight, short, rejected, unknown)] == [
      "FITS", "TIGHT", "DOES NOT FIT", "DID NOT COMPILE", "UNKNOWN"]
  code = compile_lib.exit_code
  assert (code([fits]), code([tight]), code([short]), code([rejected])) == (0, 4, 5, 1)
  assert code([unknown]) == 0  # no memory size in the description: no verdict to act on
  # Several targets: the worst verdict decides, whatever the order.
  assert code([fits, tight]) == code([tight, fits]) == 4
  assert code([fits, short, tight]) == 5
  assert code([short, rejected, fits]) == 1
  assert code([unknown, tight]) == 4
  # Each is distinct from bad input (2) and a diverged run (3), CONTRACT.md's codes.
  assert {0, 1, 4, 5}.isdisjoint({2, 3})
  assert "verdict: TIGHT (exit 4)" in compile_lib.format_report(tight)
  table = compile_lib.format_table([fits, short, tight])
  assert "verdict: the worst of the targets, DOES NOT FIT (exit 5)" in table


# --- the roofline line ----------------------------------------------------------------------------

def _roofline_text(**kwargs) -> str:
  rf = compile_lib.roofline(has_loops=False, has_library_gemms=False,
                            memory={"argument_bytes": 10 * 2**30, "output_bytes": 10 * 2**30},
                            **kwargs)
  return "\n".join(compile_lib.roofline_lines(rf, {"detail": "no peak"}))


def test_a_compute_bound_roofline_gives_the_bound_in_ms_and_its_assumption():
  # mpt-7b at batch 64 on 8 H100s: 706 TFLOP per device a step, at 989.4 TFLOP/s.
  text = _roofline_text(model_flops=706.4e12, xla={}, peak_tflops=989.4, bandwidth=3.35e12,
                        peak_assumption=compile_lib.peak_assumption("bfloat16"))
  first = text.splitlines()[0]
  assert first.startswith("roofline: step >= 713.97 ms per device, bound by compute: 706 TFLOP")
  assert "at 989.4 TFLOP/s, the datasheet's dense bf16 peak" in first
  assert "memory 6.41 ms: 20 GiB" in text  # the term that does not bind, in ms too
  # What such bounds are worth: the measured ratio, and the range it puts this step in.
  assert "measured compute-bound steps on an H200 took 2.3-3.3x such bounds, here 1642-2356 ms" \
      in text
  assert "MFU <=" not in text  # "MFU <= 100%" says nothing
  # With full remat the bound counts the recomputed forward: the MFU it leaves is said.
  text = _roofline_text(model_flops=706.4e12, xla={}, peak_tflops=989.4, bandwidth=3.35e12,
                        remat="full")
  assert "MFU <= 75.0%" in text and "recomputation" in text


def test_a_memory_bound_roofline_says_bytes_over_bandwidth_bind():
  text = _roofline_text(model_flops=148e12, xla={"bytes accessed": 3950 * 2**30},
                        peak_tflops=156, bandwidth=2.04e12,
                        peak_assumption=compile_lib.peak_assumption("float32"))
  first, second = text.splitlines()[:2]
  assert first.startswith("roofline: step >= 2079.06 ms per device, bound by memory: 3.95e+03 GiB")
  assert "at 2.04 TB/s, the described bandwidth" in first
  assert second.startswith("  compute 948.72 ms: 148 TFLOP") and "dense float32 peak" in second
  assert "MFU <= 45.6% (bytes over bandwidth exceed FLOPs over peak)" in text
  assert ", here" not in text  # the measured ratio is for compute-bound steps


# --- one warning per cause ------------------------------------------------------------------------

def test_a_warning_is_written_once_however_often_it_is_raised(capsys):
  warn = compile_lib.warn_once(sys.stderr)
  for _ in range(3):
    warn("warning: h100_sxm.txtpb: this XLA does not know the field 'x'; dropped it")
  warn("warning: another")
  assert capsys.readouterr().err.splitlines() == [
      "warning: h100_sxm.txtpb: this XLA does not know the field 'x'; dropped it",
      "warning: another"]


def test_the_report_does_not_repeat_the_dropped_field_warning():
  r = report_for(100)
  r["target"]["dropped_fields"] = ["collective_memory_granularity"]
  assert "collective_memory_granularity" not in compile_lib.format_report(r)
  assert "collective_memory_granularity" not in compile_lib.format_table([r, report_for(10)])


# --- the cheapest change that fits ----------------------------------------------------------------

def _search(r, pool_mib, max_compiles=compile_lib.MAX_FIT_COMPILES):
  """find_fit on `r` with compiles faked by fake_report; (result, changes compiled, progress)."""
  compiled, progress = [], []

  def compile_with(overrides):
    compiled.append(overrides)
    c = r["config"]
    mesh = {"data": overrides.get("mesh.data", c["mesh"]["data"]),
            "fsdp": overrides.get("mesh.fsdp", c["mesh"]["fsdp"])}
    return report_for(pool_mib, microbatches=overrides.get("microbatches", c["microbatches"]),
                      remat=overrides.get("model.remat", c["remat"]),
                      batch_size=c["batch_size"], **mesh)

  result = compile_lib.find_fit(r, compile_with, lambda text, end="\n": progress.append(text),
                                max_compiles)
  return result, compiled, progress


def test_the_first_change_that_fits_is_found_by_compiling_cheapest_first():
  # 3 MiB of state + 8 of temporaries in an 8 MiB pool: 2 microbatches leave 7 MiB (TIGHT, 11
  # with the next step's), 4 leave 5 MiB.
  result, compiled, progress = _search(report_for(8), 8)
  assert compiled == [{"microbatches": 2}]
  assert result["fits_with"]["overrides"] == {"microbatches": 2}
  assert result["fits_with"]["verdict"] == "TIGHT" and result["compiles"] == 1
  assert "compiling up to 4 changes" in progress[0] and "--suggest=False" in progress[0]
  assert progress[1] == "  --config.microbatches=2 ..."
  assert progress[2].startswith("7.00 MiB of a 8.00 MiB pool: TIGHT")
  # A 4.5 MiB pool: 3 MiB of state and a half or a quarter of 8 MiB of temporaries cannot fit,
  # so neither microbatch count is compiled; full remat is, then with 4 microbatches.
  result, compiled, _ = _search(report_for(4.5), 4.5)
  assert compiled == [{"model.remat": "full"}, {"microbatches": 4, "model.remat": "full"}]
  assert result["fits_with"]["overrides"] == {"microbatches": 4, "model.remat": "full"}
  r = report_for(4.5)
  r["fit_search"] = result
  text = compile_lib.format_report(r)
  assert ("fits with --config.microbatches=4 --config.model.remat=full: 4.00 MiB of a 4.50 MiB "
          "pool: TIGHT") in text
  assert ("    --config.microbatches=2: not tried: even 1/2 of the temporaries would need "
          "7.00 MiB") in text
  assert "    --config.model.remat=full: 7.00 MiB of a 4.50 MiB pool: DOES NOT FIT" in text


def test_the_state_alone_too_big_leaves_only_fsdp_and_the_search_is_bounded():
  # 8 devices of data parallelism, 24 MiB of state each: only sharding it can help, and then
  # (3 MiB of state, 8 of temporaries) with microbatches and remat too.
  r = report_for(8, data=8, state=24 * MIB, batch_size=64)
  result, compiled, _ = _search(r, 8)
  wider = {"mesh.data": 1, "mesh.fsdp": 8}
  assert compiled == [wider, {**wider, "microbatches": 4, "model.remat": "full"}]
  assert result["fits_with"]["overrides"] == {**wider, "microbatches": 4, "model.remat": "full"}
  skipped = [e for e in result["tried"] if "not_tried" in e]
  assert len(skipped) == 4 and all("state alone" in e["not_tried"] for e in skipped)
  # A batch that does not split into more microbatches is not compiled either.
  result, compiled, _ = _search(report_for(8, batch_size=2), 7)
  assert compiled == [{"microbatches": 2}, {"model.remat": "full"}]
  assert any("does not split into 4 microbatches" in e.get("not_tried", "")
             for e in result["tried"])
  # At most max_compiles compiles; the rest are listed as not tried.
  r = report_for(3.5, data=2, batch_size=16)
  result, compiled, progress = _search(r, 3.5, max_compiles=2)
  assert compiled == [{"model.remat": "full"}, {"microbatches": 4, "model.remat": "full"}]
  assert result["fits_with"] is None and "compiling up to 2 changes" in progress[0]
  assert sum("beyond the search's 2 compiles" in e.get("not_tried", "")
             for e in result["tried"]) == 2


def test_when_nothing_tried_fits_the_report_says_so_and_what_is_left():
  r = report_for(3.5)  # the state (3 MiB) fits; 3 MiB + the least temporaries (1 MiB) do not
  r["fit_search"], compiled, _ = _search(r, 3.5)
  assert len(compiled) == 2 and r["fit_search"]["fits_with"] is None
  text = compile_lib.format_report(r)
  assert "nothing tried fits (2 compile(s)); left: more devices" in text
  assert sum(line.endswith("pool: DOES NOT FIT") for line in text.splitlines()) == 2
  # An invalid change is skipped with the config's reason, not counted as a compile.
  def invalid(overrides):
    raise ConfigError("model.d_model", "not divisible")
  result = compile_lib.find_fit(report_for(3.5), invalid, lambda *a, **k: None)
  assert result["compiles"] == 0 and result["fits_with"] is None
  assert sum("not divisible" in e["not_tried"] for e in result["tried"]) == 2


def test_main_searches_only_when_asked_and_exits_with_the_worst_verdict(monkeypatch, capsys):
  """The whole command with the compiler faked: two targets, one short; --suggest=False skips
  the search (a script's choice), the default compiles changes for the short target alone."""
  pools = {"h100": 100, "a100-40": 8}
  calls = []

  def fake_compile_for(c, argv, target, topology_name, dump, warn):
    calls.append((target.name, c.microbatches))
    warn("warning: the same warning each compile")
    return report_for(pools[target.name], name=target.name, microbatches=c.microbatches)

  monkeypatch.setattr(compile_lib, "compile_for", fake_compile_for)
  monkeypatch.setattr(compile_lib, "check_target", lambda target: None)
  argv = ["jaxbench compile", "--config=configs/mpt.py:nano", "--target=h100,a100-40"]
  assert compile_lib.main(argv + ["--suggest=False"]) == compile_lib.EXIT_DOES_NOT_FIT
  assert calls == [("h100", 1), ("a100-40", 1)]
  out, err = capsys.readouterr()
  assert "to fit" not in out and err.count("the same warning") == 1
  calls.clear()
  assert compile_lib.main(argv) == 5  # the asked-for step still does not fit
  assert calls == [("h100", 1), ("a100-40", 1), ("a100-40", 2)]
  out, err = capsys.readouterr()
  assert "to fit (found by compiling, cheapest change first):" in out
  assert re.search(r"a100-40 +fits with --config.microbatches=2: 7.00 MiB of a 8.00 MiB pool",
                   out)
  assert "a100-40: DOES NOT FIT; compiling up to" in err and err.count("the same warning") == 1


def test_a_sweep_reads_the_verdicts_exit_codes_and_does_not_search():
  from jaxbench import sweep as sweep_lib
  from jaxbench import rocm_aot
  short = sweep_lib.compile_summary(report_for(10))
  tight = sweep_lib.compile_summary(report_for(15))
  status, reason = sweep_lib.classify_compile(compile_lib.EXIT_DOES_NOT_FIT, "", False, short)
  assert status == "oom" and "short by" in reason
  status, reason = sweep_lib.classify_compile(compile_lib.EXIT_TIGHT, "", False, tight)
  assert status == "oom" and "next step's temporaries" in reason
  assert sweep_lib.classify_compile(0, "", False, sweep_lib.compile_summary(report_for(100)))[0] \
      == "ok"
  # Its own max_batch search decides what fits; the AMD child leaves the search to its parent.
  point = type("Point", (), {"spec": "configs/mpt.py:nano", "config_args": []})()
  assert "--suggest=False" in sweep_lib.compile_command(point, "r.json", {"target": "h100"})
  assert "--suggest" not in " ".join(rocm_aot.child_argv(["compile", "--suggest", "--x=1"]))


@pytest.mark.skipif(not HAVE_AOT, reason="needs the cuda-aot extra")
def test_a_step_short_of_a_small_pool_finds_its_microbatches_by_compiling(tmp_path):
  """nano (about 10 MiB a step) for an H100 description given 12,000,000 bytes: 2 microbatches
  (about 7.5 MiB) fit in the 8.6 MiB pool. Two real compiles; the description's field that this
  XLA may not know (collective_memory_granularity) is warned about once, not per compile."""
  with open(os.path.join(REPO, "jaxbench", "targets", "h100_sxm.txtpb")) as f:
    text = re.sub(r"device_memory_size: \d+", "device_memory_size: 12000000", f.read())
  (tmp_path / "small.txtpb").write_text(text)
  proc = subprocess.run([sys.executable, "-m", "jaxbench", "compile",
                         "--config=configs/mpt.py:nano", "--target=small.txtpb"],
                        cwd=str(tmp_path), env=cli_env(tmp_path), capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == compile_lib.EXIT_DOES_NOT_FIT, proc.stderr[-3000:]
  assert "DOES NOT FIT: short by" in proc.stdout and "verdict: DOES NOT FIT (exit 5)" in proc.stdout
  assert "fits with --config.microbatches=2:" in proc.stdout, proc.stdout
  assert "small: DOES NOT FIT; compiling up to 4 changes" in proc.stderr
  assert re.search(r"--config.microbatches=2 \.\.\. [\d.]+ MiB of a 8.58 MiB pool", proc.stderr)
  assert (proc.stdout + proc.stderr).count("collective_memory_granularity") <= 1
  assert "roofline: step >= " in proc.stdout and "a floor, not a forecast" in proc.stdout
