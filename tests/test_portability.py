"""`jaxbench portability` and deterministic mode."""

import json

import pytest
from conftest import read_json, run_cli

from jaxbench import compile as compile_lib
from jaxbench import portability, rocm_aot, rundir

HAVE_ROCM_AOT = compile_lib.plugin_problem("rocm") is None and rocm_aot.toolchain_problem() is None


def test_default_config_lowers_for_every_platform(tmp_path):
  proc = run_cli(["portability", "--json=report.json"], tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads((tmp_path / "report.json").read_text())
  assert [row["platform"] for row in r["platforms"]] == ["cpu", "cuda", "rocm", "tpu"]
  for row in r["platforms"]:
    assert row["lowered"] and row["module_bytes"] > 10_000
    assert row["custom_calls"] == {}  # the XLA attention path is pure XLA: nothing vendor-specific
  assert all(v["count"] == 0 for v in r["collectives"].values())  # one device: no collectives
  for platform in ("cpu", "cuda", "rocm", "tpu"):
    assert any(line.startswith(platform) and " yes " in line for line in proc.stdout.splitlines())
  rocm = r["platforms"][2]
  if HAVE_ROCM_AOT:  # the ROCm row is compiled too, by JAX's ROCm compiler, for an MI300X
    assert rocm["compiled_for"]["compiled"] and rocm["compiled_for"]["arch"] == "gfx942"
    assert rocm["compiled_for"]["code_objects"] > 0 and "compiled for MI300X (gfx942)" in proc.stdout
  else:
    assert "not compiled: " in proc.stdout and "rocm-aot" in rocm["not_compiled"]


def test_sharded_config_on_eight_host_devices(tmp_path):
  proc = run_cli(["portability", "--devices=8", "--config=configs/llama.py:nano",
                  "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2",
                  "--config.model.attention=jax", "--config.dtype=bfloat16", "--json=r.json"], tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.loads((tmp_path / "r.json").read_text())
  assert r["n_devices"] == 8 and r["config"]["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
  assert all(row["lowered"] and row["sharding_annotations"] > 0 for row in r["platforms"])
  assert r["collectives"]["all-gather"]["count"] > 0 and r["collectives"]["all-reduce"]["count"] > 0
  assert all(row["attention"] == "jax" for row in r["platforms"])
  if HAVE_ROCM_AOT:  # and RCCL's collectives in the step compiled for 8 MI300X
    compiled = r["platforms"][2]["compiled_for"]
    assert compiled["compiled"] and compiled["collectives"]["all-gather"]["count"] > 0


def test_cudnn_request_is_reported_not_faked(tmp_path):
  import importlib.util

  from jaxbench import compile as compile_lib
  # The CUDA plugin and the cuDNN wheel (both in the cuda-aot extra, which CI installs).
  have_cudnn = (compile_lib.plugin_problem("cuda") is None
                and importlib.util.find_spec("nvidia") is not None
                and importlib.util.find_spec("nvidia.cudnn") is not None)
  proc = run_cli(["portability", "--config=configs/mpt.py:nano", "--config.model.attention=cudnn",
                  "--config.dtype=bfloat16", "--platforms=cuda,rocm", "--rocm_target=none",
                  "--json=r.json"], tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = json.loads((tmp_path / "r.json").read_text())["platforms"]
  if have_cudnn:
    # Lowered with cuDNN's attention: its custom calls are the step's vendor-specific part, and
    # jax.export's missing compatibility guarantee for them is said, not hidden.
    assert rows[0]["lowered"] and rows[0]["attention"] == "cudnn", rows[0]
    assert {"__cudnn$fmhaSoftmax", "__cudnn$fmhaSoftmaxBackward"} <= set(rows[0]["custom_calls"])
    assert rows[0]["unguaranteed_custom_calls"] == sorted(rows[0]["custom_calls"])
    assert "compatibility guarantee" in rows[0]["note"]
  else:
    assert rows[0]["attention"] == "xla" and "did not lower here" in rows[0]["note"]
    assert "cuDNN" in rows[0]["note"]  # the real reason, from trying
  assert "CUDA-only" in rows[1]["note"]


def test_unguaranteed_custom_calls_are_read_from_exports_refusal():
  refusal = ValueError(
      "Cannot serialize code with custom calls whose targets have no compatibility guarantees. "
      "See https://docs.jax.dev/en/latest/export/export.html. Examples are:\n"
      '%0 = stablehlo.custom_call @__cudnn$fmhaSoftmax(%a) {backend_config = ""} : ...\n'
      '%1 = "stablehlo.custom_call"(%b) {call_target_name = "__cudnn$fmhaSoftmaxBackward"} : ...\n'
      '%2 = stablehlo.custom_call @__cudnn$fmhaSoftmax(%c) : ....\n')
  assert portability.unguaranteed_custom_calls(refusal) == (
      "__cudnn$fmhaSoftmax", "__cudnn$fmhaSoftmaxBackward")
  assert portability.unguaranteed_custom_calls(ValueError("cuDNN is not detected")) == ()
  assert portability.unguaranteed_custom_calls(RuntimeError(str(refusal))) == ()


@pytest.mark.parametrize("args,needle", [(["--platforms=metal"], "--platforms"),
                                         (["--config.model.n_heads=5"], "model.n_heads")])
def test_portability_bad_input(tmp_path, args, needle):
  proc = run_cli(["portability", *args], tmp_path)
  assert proc.returncode == 2 and needle in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1


def test_module_report_reads_custom_calls():
  text = ('%0 = stablehlo.custom_call @__cudnn$fmhaSoftmax(%a) : ...\n'
          '%1 = stablehlo.custom_call @__cudnn$fmhaSoftmax(%b)\n'
          '%2 = "stablehlo.custom_call"(%c) {call_target_name = "__gpu$xla.gpu.triton"}\n'
          '%3 = sdy.sharding_constraint %2 <@mesh, [{"data"}]>\n')
  r = portability.module_report(text)
  assert r["custom_calls"] == {"__cudnn$fmhaSoftmax": 2, "__gpu$xla.gpu.triton": 1}
  assert r["sharding_annotations"] == 1


def test_deterministic_runs_are_bitwise_equal(tmp_path):
  args = ["train", "--config=configs/llama.py:nano", "--config.steps=4", "--config.peak_tflops=1",
          "--config.deterministic=True", "--config.warmup_steps_excluded=0"]
  for name in ("a", "b"):
    proc = run_cli([*args, f"--workdir={name}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
  a = [r["loss"] for r in rundir.read_metrics(str(tmp_path / "a" / "metrics.jsonl"))]
  b = [r["loss"] for r in rundir.read_metrics(str(tmp_path / "b" / "metrics.jsonl"))]
  assert a == b and len(a) == 4
  info = read_json(tmp_path / "a" / "run.json")
  assert info["deterministic"]["requested"] and info["deterministic"]["applied"]
  assert "--xla_gpu_deterministic_ops=true" in info["env"]["XLA_FLAGS"]


def test_the_rocm_compile_takes_the_config_flags_in_either_spelling():
  argv = ["jaxbench portability", "--config=configs/mpt.py:nano", "--platforms=rocm", "--config.dtype",
          "bfloat16", "--devices=8", "--config.mesh.fsdp=8", "--rocm_target=mi250x"]
  assert portability.config_args(argv) == ["--config=configs/mpt.py:nano", "--config.dtype",
                                           "bfloat16", "--config.mesh.fsdp=8"]
