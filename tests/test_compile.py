"""`jaxbench compile`: the train step built for an H100 / A100 on this CPU-only machine.

Needs the `cuda-aot` extra (CI installs it and sets JAXBENCH_REQUIRE_AOT=1, so there a missing
plugin fails instead of skipping)."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, cli_env, read_json
from jaxbench import compile as compile_lib
from jaxbench import config as config_lib
from jaxbench import rundir as rundir_lib
from jaxbench import sweep as sweep_lib
from jaxbench import sweepfile

HAVE_AOT = compile_lib.plugin_problem("cuda") is None
if not HAVE_AOT and os.environ.get("JAXBENCH_REQUIRE_AOT") == "1":
  raise RuntimeError("JAXBENCH_REQUIRE_AOT=1 but " + compile_lib.plugin_problem("cuda"))
needs_aot = pytest.mark.skipif(not HAVE_AOT, reason="needs the cuda-aot extra")


def _config(spec, *overrides):
  c, _ = config_lib.parse_flags(["test", f"--config={spec}", *overrides])
  return c


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
  """Three deviceless compiles (each takes seconds: Triton and ptxas run for real): two in this
  process, one through the command line with --json and --dump."""
  if not HAVE_AOT:
    pytest.skip("needs the cuda-aot extra")
  warnings = []
  run = lambda target, topology, spec, *o: compile_lib.compile_report(  # noqa: E731
      _config(spec, *o), compile_lib.read_target(target), topology, None, warnings.append)
  tmp = tmp_path_factory.mktemp("compile-cli")
  proc = subprocess.run([sys.executable, "-m", "jaxbench", "compile", "--config=configs/mpt.py:nano",
                         "--config.mesh.data=1", "--config.mesh.fsdp=8", "--topology=1x2x4",
                         "--target=" + os.path.join(REPO, "jaxbench", "targets", "h100_sxm.txtpb"),
                         "--json", f"--dump={tmp / 'dump'}", f"--report={tmp / 'report.json'}"],
                        cwd=str(tmp), env=cli_env(tmp),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return {
      "tiny": run("h100", "1x1x1", "configs/mpt.py:tiny"),
      # 4096 sequences of 2048 tokens: the activations alone are far beyond one A100.
      "huge_batch": run("a100", "1x1x1", "configs/mpt.py:tiny", "--config.batch_size=4096",
                        "--config.seq_len=2048"),
      "fsdp8": json.loads(proc.stdout), "dump": os.listdir(tmp / "dump"),
      "fsdp8_report_file": read_json(tmp / "report.json"),
      "warnings": warnings,
  }


@needs_aot
def test_default_config_compiles_for_h100_and_fits(reports):
  r = reports["tiny"]
  assert r["compiled"], r.get("error")
  assert r["target"]["device"] == "NVIDIA H100 80GB HBM3"
  assert r["n_devices"] == 1 and r["memory"]["fits"] is True
  # The GPU compiler chose real GPU kernels: Triton or library GEMMs for the matmuls.
  assert any("GEMM" in k for k in r["kernels"]), r["kernels"]
  assert all(v["count"] == 0 for v in r["collectives"].values())
  # The shipped H100 description has a field jax 0.10 does not know: dropped with a warning.
  if r["target"]["dropped_fields"]:
    assert any("dropped" in w for w in reports["warnings"])
  assert "NOT" not in compile_lib.format_report(r)
  # float32: the xla attention, at mpt:tiny's seq 128 in two blocks of 64 query rows.
  assert r["attention"]["implementation"] == "xla" and r["attention"]["query_blocks"] == 2
  assert "2 blocks of 64 query rows, 75.0% of the scores" in compile_lib.format_report(r)
  m = r["memory"]
  assert m["with_next_step_bytes"] == m["total_bytes"] + m["temp_bytes"]
  assert m["fits_with_next_step"] is True and "TIGHT" not in compile_lib.format_report(r)


def test_a_step_that_fits_once_but_not_beside_the_next_ones_temporaries_is_tight():
  class Analysis:  # mpt-1b at batch 8 on an H200, as XLA assigned it (GiB)
    argument_size_in_bytes = output_size_in_bytes = alias_size_in_bytes = int(14.70 * 2**30)
    temp_size_in_bytes, generated_code_size_in_bytes = int(59.38 * 2**30), 0
  m = compile_lib.memory_report(Analysis, 150109880320, 0.75)
  assert m["fits"] is True and m["fits_with_next_step"] is False
  summary = {"status": "compiled", "device_kind": "NVIDIA H200", "fits": True,
             "short_by_bytes": 0, "fits_with_next_step": False, "pool_bytes": m["pool_bytes"],
             "with_next_step_bytes": m["with_next_step_bytes"]}
  status, reason = sweep_lib.classify_compile(0, "", False, summary)
  assert status == "oom" and "step 2" in reason
  # Half the temporaries (batch 4): room for both.
  Analysis.temp_size_in_bytes = int(33.29 * 2**30)
  assert compile_lib.memory_report(Analysis, 150109880320, 0.75)["fits_with_next_step"] is True


@needs_aot
def test_memory_is_at_least_the_analytic_floor_and_grows_with_batch(reports):
  # (The two are built for different descriptions, H100 and A100: XLA's buffer assignment of the
  # same step differs between them by far less than the 4096-fold batch changes it.)
  small, big = reports["tiny"], reports["huge_batch"]
  n = small["n_params"]
  # params + AdamW mu and nu (float32) are arguments; the step holds the gradients (float32) too.
  assert small["memory"]["argument_bytes"] >= 3 * 4 * n
  assert small["memory"]["total_bytes"] >= 4 * 4 * n
  assert big["memory"]["temp_bytes"] > small["memory"]["temp_bytes"]
  assert big["memory"]["total_bytes"] > small["memory"]["total_bytes"]
  rf = small["roofline"]
  assert rf["step_time_lower_bound_s"] > 0 and 0 < rf["mfu_upper_bound"] <= 1
  assert rf["peak_tflops_per_device"] > 0 and rf["bandwidth_bytes_per_s"] > 1e12


@needs_aot
def test_fsdp8_over_two_hosts_for_h100_lists_the_collectives_it_implies(reports):
  r = reports["fsdp8"]  # from `jaxbench compile --json --dump=DIR` with a description's path
  assert r["compiled"], r.get("error")
  assert r["target"]["device"] == "NVIDIA H100 80GB HBM3" and r["processes"] == 2
  assert r["target"]["name"] == "h100_sxm" and r["memory"]["fits"]
  assert reports["fsdp8_report_file"] == r  # --report: what `jaxbench sweep --compile_only` reads
  assert "train_step.optimized.hlo.txt" in reports["dump"]
  assert any(name.endswith(".ptx") for name in reports["dump"]), reports["dump"][:20]
  assert r["config"]["mesh"] == {"data": 1, "fsdp": 8, "tensor": 1}
  # FSDP: params all-gathered for compute, gradients reduce-scattered back to their shards.
  assert r["collectives"]["all-gather"]["count"] > 0, r["collectives"]
  assert r["collectives"]["reduce-scatter"]["count"] + r["collectives"]["all-reduce"]["count"] > 0
  # Each device holds 1/8 of params and AdamW state: arguments well under the whole state.
  assert r["memory"]["argument_bytes"] < 3 * 4 * r["n_params"] / 4


@needs_aot
def test_an_impossible_size_reports_short_by(reports):
  r = reports["huge_batch"]
  assert r["compiled"], r.get("error")
  assert r["target"]["device"].startswith("NVIDIA A100")
  m = r["memory"]
  assert m["fits"] is False and m["short_by_bytes"] == m["total_bytes"] - m["pool_bytes"] > 0
  text = compile_lib.format_report(r)
  assert "DOES NOT FIT: short by" in text and "roofline: step >=" in text


@needs_aot
def test_unrolled_layers_keep_the_residual_stream_batch_major_for_the_gpu(tmp_path):
  """With the learned position table added by broadcast, its gradient (a reduction over the batch)
  made XLA's GPU layout assignment store the whole residual stream of unrolled layers as [S, d, B]
  at batch 32 (every residual add and norm a transpose: mpt-125m, H200, 182 GB of memory traffic
  a step instead of 148). The position lookup (model.Transformer) keeps it [B, S, d]."""
  b, s, d = 32, 64, 192
  c = _config("configs/mpt.py:tiny", "--config.model.scan_layers=False", f"--config.batch_size={b}",
              f"--config.seq_len={s}", f"--config.model.d_model={d}", "--config.model.n_layers=1")
  r = compile_lib.compile_report(c, compile_lib.read_target("h100"), "1x1x1", str(tmp_path),
                                 lambda w: None)
  assert r["compiled"], r.get("error")
  text = (tmp_path / "train_step.optimized.hlo.txt").read_text()
  assert f"[{b},{s},{d}]" in text
  assert f"[{s},{d},{b}]" not in text  # 207 such arrays with the broadcast add


def test_unknown_fields_are_dropped_whole():
  text = "a: 1\nnew_block {\n  x: 2\n  inner {\n    y: 3\n  }\n}\nnew_field: 4\nb: 5\n"
  assert compile_lib.drop_field(compile_lib.drop_field(text, "new_block"), "new_field") == "a: 1\nb: 5\n"


def test_kernel_kinds_are_read_from_the_hlo():
  hlo = ('%a = f32[2]{0} custom-call(), custom_call_target="__cublas$lt$matmul"\n'
         '%b = bf16[2] custom-call(), custom_call_target="__cudnn$fmhaSoftmax"\n'
         '%c = f32[2] fusion(), kind=kCustom, backend_config={"fusion_backend_config":{"kind":"__triton_gemm"}}\n')
  kinds = compile_lib.kernel_report(hlo)
  assert kinds == {"Triton GEMM fusion (__triton_gemm)": 1,
                   "cuDNN attention (__cudnn$fmhaSoftmax)": 1,
                   "vendor BLAS GEMM (__cublas$lt$matmul)": 1}


def test_bad_target_and_topology_exit_2_before_compiling(tmp_path):
  for args, needle in ((["--target=b200"], "--target"),
                       (["--topology=8"], "--topology")):
    proc = subprocess.run([sys.executable, "-m", "jaxbench", "compile",
                           "--config=configs/mpt.py:nano", *args], cwd=str(tmp_path),
                          env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_a_plugin_that_did_not_start_is_explained(monkeypatch):
  """When JAX started before jaxbench could set JAX_PLATFORMS=cpu, the CUDA plugin fails its
  start-up checks on a machine without the GPU and JAX has no CUDA topology: the error says why
  and what to do, not only XLA's "topology not implemented for cuda"."""
  from jax.experimental import topologies

  def not_registered(platform, **kwargs):
    raise NotImplementedError(f"topology not implemented for {platform}")

  monkeypatch.setattr(topologies, "get_topology_desc", not_registered)
  with pytest.raises(compile_lib.ConfigError) as e:
    compile_lib.topology(compile_lib.read_target("h100"), "1x1x1", print)
  message = str(e.value)
  assert "did not start in this process" in message and "JAX_PLATFORMS=cpu" in message


def test_missing_plugin_names_the_extra(monkeypatch):
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
  assert "cuda-aot" in compile_lib.plugin_problem("cuda")
  assert "ROCm" in compile_lib.plugin_problem("rocm")


@needs_aot
def test_other_commands_stay_quiet_with_the_plugin_and_no_gpu(tmp_path):
  """The CUDA plugin is installed and there is no GPU: JAX would print a cuDNN traceback at every
  start; jaxbench picks the CPU itself and says so in run.json."""
  env = cli_env(tmp_path)
  env.pop("JAX_PLATFORMS")
  proc = subprocess.run([sys.executable, "-m", "jaxbench", "train", "--config=configs/mpt.py:nano",
                         "--config.steps=2", "--config.warmup_steps_excluded=0", "--config.peak_tflops=1",
                         "--workdir=run"],
                        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr and "Unable to load" not in proc.stderr, proc.stderr[-3000:]
  run = read_json(tmp_path / "run" / "run.json")
  assert run["backend"] == "cpu"
  assert "no such GPU" in run["env"]["JAXBENCH_PLATFORMS_NOTE"]


class FakeCompiler(sweep_lib.Runner):
  """`jaxbench compile` without compiling: a batch "fits" up to `capacity` sequences."""

  def __init__(self, capacity):
    super().__init__(sweep_lib.Display(1, stream=open(os.devnull, "w")))
    self.capacity, self.commands = capacity, []

  def run(self, cmd, env, log_path, timeout_s, label):
    self.commands.append(cmd)
    batch = int([a for a in cmd if a.startswith("--config.batch_size=")][-1].split("=")[1])
    report = [a for a in cmd if a.startswith("--report=")][0].split("=", 1)[1]
    fits = batch <= self.capacity
    rundir_lib.write_json(report, {
        "compiled": True, "lower_s": 1.0, "compile_s": 2.0, "n_params": 10, "n_devices": 8,
        "target": {"device": "NVIDIA H100 80GB HBM3", "platform": "cuda"},
        "config": {"family": "mpt", "batch_size": batch},
        "memory": {"total_bytes": batch * 2**30, "fits": fits, "pool_bytes": self.capacity * 2**30,
                   "short_by_bytes": max(0, batch - self.capacity) * 2**30},
        "roofline": {"step_time_lower_bound_s": 0.5, "mfu_upper_bound": 0.9}})
    with open(log_path, "w") as f:
      f.write("compiled\n")
    return {"returncode": 0, "timed_out": False, "log": "compiled\n", "duration_s": 0.1}


def test_compile_only_sweep_finds_the_largest_batch_that_fits_without_a_gpu(tmp_path):
  path = tmp_path / "aot.py"
  path.write_text('def get_sweep():\n  return {"base": "configs/mpt.py:nano", "fixed": '
                  '{"mesh.data": 1, "mesh.fsdp": 8}, "axes": {"batch_size": [8]}, "max_batch": '
                  '{"limit": 8}, "compile_only": {"target": "h100", "topology": "1x1x8"}}\n')
  sweep = sweepfile.build(str(path))
  assert sweep.compile_only == {"target": "h100", "topology": "1x1x8"}
  # The command line replaces the file's target, and a compile-only point is a point of its own.
  assert sweepfile.build(str(path), compile_only="a100").compile_only["target"] == "a100"
  assert sweepfile.build(str(path), compile_only="a100").points[0].id != sweep.points[0].id
  runner = FakeCompiler(capacity=44)
  r = sweep_lib.run_point(runner, sweep.points[0], str(tmp_path / "out"), sweep.max_batch, "p",
                          sweep.compile_only)
  assert r["status"] == "ok" and r["max_batch"]["batch_size"] == 40  # 5 x 8 fits, 6 x 8 does not
  assert all(c[3] == "compile" and "--target=h100" in c and "--topology=1x1x8" in c
             for c in runner.commands)
  assert r["fits"] is True and r["peak_memory_bytes_per_device"] == 40 * 2**30
  assert "nothing ran" in r["peak_memory_source"] and r["device_kind"].startswith("NVIDIA H100")


def test_compile_only_bad_target_is_bad_input(tmp_path):
  path = tmp_path / "aot.py"
  path.write_text('def get_sweep():\n  return {"base": "configs/mpt.py:nano", "compile_only": "b200"}\n')
  with pytest.raises(sweepfile.BadInput, match="b200"):
    sweepfile.build(str(path))


# --- --describe_local: the local GPU's own description ---------------------------------------------

# An H200 (SXM, 141 GB) as its driver described it on 2026-11-28 (benchmarks/results/2026-11-28-h200-*
# local.txtpb: 3201000 kHz memory clock and 4.814 TB/s, so a 6016-bit bus).
H200_ATTRIBUTES = dict(
    max_threads_per_block=1024, max_block_dim_x=1024, max_block_dim_y=1024, max_block_dim_z=64,
    max_grid_dim_x=2147483647, max_grid_dim_y=65535, max_grid_dim_z=65535,
    max_shared_memory_per_block=49152, warp_size=32, max_registers_per_block=65536,
    clock_rate_khz=1980000, multiprocessor_count=132, ecc_enabled=1, memory_clock_rate_khz=3201000,
    global_memory_bus_width_bits=6016, l2_cache_size=62914560, max_threads_per_multiprocessor=2048,
    compute_capability_major=9, compute_capability_minor=0,
    max_shared_memory_per_multiprocessor=233472, max_registers_per_multiprocessor=65536,
    max_shared_memory_per_block_optin=232448, total_memory=150109880320)


def _h200(**changes):
  from jaxbench import gpu_target
  return gpu_target.LocalGpu(name="NVIDIA H200", attributes={**H200_ATTRIBUTES, **changes},
                             driver_version=13000, runtime_version=13000, dnn_version=91000)


def test_describe_local_writes_the_cards_own_facts_into_the_architectures_layout():
  from jaxbench import gpu_target
  text = gpu_target.describe(_h200())
  field = lambda name: compile_lib._field(text, name)  # noqa: E731
  # Facts of this card, computed as XLA computes them (bandwidth: two transfers per memory clock over the bus).
  assert field("device_memory_size") == "150109880320"
  assert field("memory_bandwidth") == "4814304000000"  # what the H200 machine itself wrote
  assert field("l2_cache_size") == "62914560" and field("core_count") == "132"
  assert field("name") == field("device_description_str") == "NVIDIA H200"
  assert field("dnn_version") == "9.10.0" and field("runtime_version") == "13.0.0"
  # The H100's per-architecture tables are kept (same compute capability), its own card's
  # facts that the driver cannot confirm here are not.
  h100 = compile_lib.read_target("h100").text
  assert "matrix_unit_description" in text and "1.8295201" in text
  assert "pcie_bandwidth" not in text and "device_interconnect_info" not in text
  assert text.count("clock_rate_ghz: 1.98") == h100.count("clock_rate_ghz: 1.98")
  # A compute capability with no shipped layout gets the driver's facts alone.
  bare = gpu_target.describe(_h200(compute_capability_major=12, compute_capability_minor=0))
  assert "matrix_unit_description" not in bare and "major: 12" in bare
  assert "device_memory_size: 150109880320" in bare


@needs_aot
def test_a_described_card_is_a_target_xla_accepts(tmp_path):
  from jaxbench import gpu_target
  path = tmp_path / "h200.txtpb"
  path.write_text(gpu_target.describe(_h200()))
  target = compile_lib.read_target(str(path))
  assert target.memory_bytes == 150109880320 and target.device_name == "NVIDIA H200"
  warnings = []
  topo, used = compile_lib.topology(target, "1x1x1", warnings.append)
  assert len(topo.devices) == 1 and "matrix_unit_description" in used.text


def test_describe_local_without_a_gpu_exits_2_saying_so(tmp_path, monkeypatch, capsys):
  import ctypes
  def no_driver(name, *a, **k):
    raise OSError(f"{name}: cannot open shared object file")
  monkeypatch.setattr(ctypes, "CDLL", no_driver)
  assert compile_lib.main(["jaxbench compile", "--describe-local"]) == 2
  err = capsys.readouterr().err
  assert "no NVIDIA driver here" in err and "--target" in err
