"""`jaxbench compile` for AMD targets: the train step built by JAX's real ROCm compiler for gfx942
(MI300X) and gfx90a (MI250X, MI250) on this CPU-only machine, with no ROCm installed.

Needs the `rocm-aot` extra and a C compiler (CI installs both and sets JAXBENCH_REQUIRE_ROCM_AOT=1,
so there a missing plugin fails instead of skipping)."""

import json
import os
import struct
import subprocess
import sys

import pytest

from conftest import cli_env, read_json
from jaxbench import compile as compile_lib
from jaxbench import config as config_lib
from jaxbench import rocm_aot

PROBLEM = compile_lib.plugin_problem("rocm") or rocm_aot.toolchain_problem()
if PROBLEM and os.environ.get("JAXBENCH_REQUIRE_ROCM_AOT") == "1":
  raise RuntimeError("JAXBENCH_REQUIRE_ROCM_AOT=1 but " + PROBLEM)
needs_rocm = pytest.mark.skipif(PROBLEM is not None, reason=f"needs the rocm-aot extra: {PROBLEM}")
HAVE_CUDA_AOT = compile_lib.plugin_problem("cuda") is None
# One stand-in cache for the whole module (each test process would otherwise build its own).
CACHE = {}


def _compile(tmp_path, *args, cache=None, **env):
  cache = cache or CACHE.setdefault("dir", str(tmp_path / "cache"))
  return subprocess.run([sys.executable, "-m", "jaxbench", "compile", *args], cwd=str(tmp_path),
                        env=cli_env(tmp_path, JAXBENCH_CACHE_DIR=cache, **env),
                        capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
  """Two deviceless ROCm compiles of the small preset (seconds each: LLVM's AMDGPU backend and
  lld run for real): MI300X with FSDP over 2 GCDs, one MI250X GCD; and the same FSDP step for an
  H100, whose arguments must be the MI300X's."""
  if PROBLEM:
    pytest.skip(PROBLEM)
  tmp = tmp_path_factory.mktemp("rocm")
  fsdp = ["--config=configs/mpt.py:tiny", "--config.mesh.data=1", "--config.mesh.fsdp=2",
          "--topology=1x1x2"]
  out = {}
  proc = _compile(tmp, *fsdp, "--target=mi300x", "--json")
  assert proc.returncode == 0, proc.stderr[-3000:]
  out["mi300x_fsdp2"] = json.loads(proc.stdout)
  # Two vendors in one command, one table (its JSON: --report).
  proc = _compile(tmp, "--config=configs/mpt.py:tiny", "--config.dtype=bfloat16",
                  "--target=mi250x,a100-40", f"--report={tmp / 'table.json'}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  out["table_text"] = proc.stdout
  out["mi250x"], out["a100_40"] = read_json(tmp / "table.json")["targets"]
  if HAVE_CUDA_AOT:
    c, _ = config_lib.parse_flags(["test", *fsdp[:-1]])
    out["h100_fsdp2"] = compile_lib.compile_report(c, compile_lib.read_target("h100"), "1x1x2",
                                                   None, lambda w: None)
  return out


@needs_rocm
def test_the_step_compiles_for_gfx942_with_fsdp_and_its_collectives(reports):
  r = reports["mi300x_fsdp2"]
  assert r["compiled"], r.get("error")
  assert r["target"]["platform"] == "rocm" and r["target"]["device"] == "MI300X"
  assert r["n_devices"] == 2 and r["config"]["mesh"] == {"data": 1, "fsdp": 2, "tensor": 1}
  rocm = r["rocm"]
  # The code objects are AMDGPU ELF for the requested target, read back from the compiler.
  assert rocm["code_objects"]["ok"] and rocm["code_objects"]["count"] > 0
  assert rocm["code_objects"]["found"] == {"gfx942:sramecc+:xnack-": rocm["code_objects"]["count"]}
  # FSDP: params all-gathered for compute, gradients reduced back to their shards.
  assert r["collectives"]["all-gather"]["count"] > 0, r["collectives"]
  assert r["collectives"]["reduce-scatter"]["count"] + r["collectives"]["all-reduce"]["count"] > 0
  assert any("GEMM" in k for k in r["kernels"]), r["kernels"]
  # The MI300X's memory as the card has it (192 GB), not the 252 GiB of OpenXLA's file.
  assert r["target"]["memory_bytes"] == 206141652992 and r["memory"]["fits"]
  assert r["peak"]["source"] == "table" and r["peak"]["tflops"] == 163.4  # float32 matrix peak
  assert 0 < r["roofline"]["mfu_upper_bound"] <= 1
  text = compile_lib.format_report(r)
  assert "ROCm plugin 0.10" in text or "ROCm plugin" in text
  assert "code objects:" in text and "gfx942:sramecc+:xnack-" in text and "FITS" in text


@needs_rocm
def test_the_stand_ins_are_loaded_and_only_registration_reaches_them(reports):
  rocm = reports["mi300x_fsdp2"]["rocm"]
  if not rocm["standins"]:
    pytest.skip("ROCm is installed here: its own libraries were used")
  assert "libamdhip64.so.7" in rocm["standins"] and rocm["libraries"] == "link-only stand-ins"
  # The plugin registered its kernels with the (stand-in) HIP runtime as it loaded ...
  assert rocm["standin_calls"]["libamdhip64.so.7 __hipRegisterFatBinary"] > 0
  # ... and compiling called nothing else in them.
  assert rocm["unexpected_standin_calls"] == {}
  assert "nothing but the plugin's load-time registrations" in compile_lib.format_report(
      reports["mi300x_fsdp2"])


@needs_rocm
def test_an_mi250x_gcd_compiles_for_gfx90a_against_its_own_peak(reports):
  r = reports["mi250x"]
  assert r["compiled"], r.get("error")
  assert r["rocm"]["code_objects"]["ok"]
  assert set(r["rocm"]["code_objects"]["found"]) == {"gfx90a:sramecc+:xnack-"}
  assert r["target"]["device"] == "AMD Instinct MI250X/MI250" and r["target"]["name"] == "mi250x"
  # One GCD: 64 GB HBM2e, its 110 compute units tell it from an MI250's, half the card's peak.
  assert r["target"]["memory_bytes"] == 68702699520
  assert r["peak"]["tflops"] == 191.5 and "110 compute units" in r["peak"]["detail"]
  assert r["attention"]["implementation"] == "xla"  # cuDNN is NVIDIA-only


@needs_rocm
def test_several_targets_make_one_table_across_vendors(reports):
  amd, nvidia = reports["mi250x"], reports["a100_40"]
  assert nvidia["compiled"] and nvidia["target"]["device"] == "NVIDIA A100-SXM4-40GB"
  assert nvidia["target"]["arch"] == "sm_80" and amd["target"]["arch"] == "gfx90a"
  assert nvidia["memory"]["pool_bytes"] == int(42505273344 * 0.75)
  rows = {line.split()[0]: line for line in reports["table_text"].splitlines()
          if line.startswith(("mi250x ", "a100-40 "))}  # the table's rows, not the details
  assert "gfx90a" in rows["mi250x"] and "xla" in rows["mi250x"] and "FITS" in rows["mi250x"]
  assert "sm_80" in rows["a100-40"] and "FITS" in rows["a100-40"]
  text = reports["table_text"]
  # What sets the rows apart is said: the attention each ran, the code objects, no autotuning.
  if nvidia["attention"]["implementation"] == "cudnn":
    assert "mi250x: attention xla (cuDNN's fused kernel is NVIDIA-only" in text
    assert "cuDNN attention" in text
  assert "code objects for gfx90a:sramecc+:xnack-, checked" in text and "autotuning" in text


def test_a_bad_target_among_several_stops_before_anything_compiles(tmp_path):
  proc = _compile(tmp_path, "--config=configs/mpt.py:nano", "--target=h100,b200")
  _one_line(proc, "'b200' is neither a shipped target")
  proc = _compile(tmp_path, "--config=configs/mpt.py:nano", "--target=h100,H100")
  _one_line(proc, "names a target twice")


@needs_rocm
@pytest.mark.skipif(not HAVE_CUDA_AOT, reason="needs the cuda-aot extra")
def test_arguments_per_device_equal_the_cuda_targets(reports):
  """The same step and mesh hold the same state on either vendor: params and AdamW state sharded
  alike. (Temporaries are the compilers' own and differ.)"""
  amd, nvidia = reports["mi300x_fsdp2"]["memory"], reports["h100_fsdp2"]["memory"]
  assert amd["argument_bytes"] == nvidia["argument_bytes"] > 0
  assert amd["output_bytes"] == nvidia["output_bytes"]


@needs_rocm
def test_the_jax_internals_relied_on_are_still_there():
  count = rocm_aot.private_api("amd_gpu_count")
  assert isinstance(count(stop_at=1), int)  # no AMD GPU on CI: 0
  # The plugin asks it as a module attribute at start-up: what start_deviceless answers.
  import importlib.util
  spec = importlib.util.find_spec("jax_plugins.xla_rocm7")
  with open(spec.origin) as f:
    assert "hardware_utils.num_available_amd_gpus(" in f.read()


def test_code_objects_are_told_apart_by_their_elf_header(tmp_path):
  def elf(machine, flags):
    header = bytearray(64)
    header[:4] = b"\x7fELF"
    struct.pack_into("<H", header, 18, machine)
    struct.pack_into("<I", header, 48, flags)
    return bytes(header)

  assert rocm_aot.read_code_object(elf(224, 0xE4C)) == {
      "machine": 224, "amdgpu": True, "arch": "gfx942",
      "features": {"sramecc": "+", "xnack": "-"}}
  objects = tmp_path / "objects"
  objects.mkdir()
  (objects / "a.hsaco").write_bytes(elf(224, 0xE3F))  # gfx90a:sramecc+:xnack-
  check = rocm_aot.code_object_check(str(objects), "gfx90a", {"sramecc": "+"})
  assert check["ok"] and check["found"] == {"gfx90a:sramecc+:xnack-": 1}
  assert not rocm_aot.code_object_check(str(objects), "gfx942", {})["ok"]
  assert not rocm_aot.code_object_check(str(objects), "gfx90a", {"xnack": "+"})["ok"]
  (objects / "c.hsaco").write_bytes(elf(224, 0x3F))  # gfx90a, features "any": runs either way
  check = rocm_aot.code_object_check(str(objects), "gfx90a", {"sramecc": "+", "xnack": "-"})
  assert check["ok"] and check["found"] == {"gfx90a:sramecc+:xnack-": 1, "gfx90a": 1}
  (objects / "b.o").write_bytes(elf(62, 0))  # an x86-64 object: never a ROCm compile
  assert not rocm_aot.code_object_check(str(objects), "gfx90a", {})["ok"]
  assert not rocm_aot.code_object_check(str(tmp_path / "none"), "gfx90a", {})["ok"]


def test_stand_in_sources_keep_symbol_versions():
  source, script = rocm_aot.standin_source(
      "libamdhip64.so.7", {"hip_4.2": {"hipMalloc", "hipFree"}, None: {"__hipRegisterFatBinary"}})
  assert 'const char *s0(void) __asm__("__hipRegisterFatBinary");' in source
  assert script == "hip_4.2 { global: hipFree; hipMalloc; };\n"
  syms = ("   5: 0000000000000000     0 FUNC    GLOBAL DEFAULT  UND hipMalloc@hip_4.2 (34)\n"
          "   6: 0000000000000000     0 FUNC    WEAK   DEFAULT  UND __gmon_start__\n"
          "   7: 0000000000000000     0 OBJECT  GLOBAL DEFAULT  UND _ZTISt9exception\n")
  assert rocm_aot.undefined_symbols(syms) == [("hipMalloc", "hip_4.2"), ("_ZTISt9exception", None)]
  versions = ("Version needs section '.gnu.version_r' contains 1 entries:\n"
              "  000000: Version: 1  File: libamdhip64.so.7  Cnt: 1\n"
              "  0x00b0:   Name: hip_4.2  Flags: none  Version: 34\n")
  assert rocm_aot.version_files(versions) == {"hip_4.2": "libamdhip64.so.7"}


def test_child_arguments_drop_what_the_parent_sets():
  argv = ["jaxbench compile", "--config=configs/mpt.py:tiny", "--target", "mi300x", "--json",
          "--report=r.json", "--nosuggest", "--topology=1x1x2", "--config.batch_size=4"]
  assert rocm_aot.child_argv(argv) == ["--config=configs/mpt.py:tiny", "--topology=1x1x2",
                                       "--config.batch_size=4"]


# --- bad input: exit 2, one line naming the fix, nothing compiled ---------------------------------

def _one_line(proc, needle):
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
  assert needle in proc.stderr, proc.stderr


@needs_rocm
def test_without_a_c_compiler_the_stand_ins_cannot_be_built(tmp_path):
  proc = _compile(tmp_path, "--config=configs/mpt.py:nano", "--target=mi250",
                  cache=str(tmp_path / "empty-cache"), CC="no-such-compiler")
  _one_line(proc, "C compiler")
  assert "apt-get install gcc binutils" in proc.stderr


@needs_rocm
def test_an_unknown_gfx_architecture_is_refused_before_the_compiler_aborts(tmp_path):
  text = compile_lib.read_target("mi300x").text.replace("gfx942:sramecc+:xnack-", "gfx1234")
  (tmp_path / "future.txtpb").write_text(text)
  proc = _compile(tmp_path, "--config=configs/mpt.py:nano", "--target=future.txtpb")
  _one_line(proc, "unknown AMD GPU architecture 'gfx1234'")
  assert "gfx942" in proc.stderr and "gfx90a" in proc.stderr


@needs_rocm
def test_a_target_file_that_does_not_parse(tmp_path):
  text = compile_lib.read_target("mi250").text.replace("core_count: 104", "core_count: many")
  (tmp_path / "broken.txtpb").write_text(text)
  proc = _compile(tmp_path, "--config=configs/mpt.py:nano", "--target=broken.txtpb")
  _one_line(proc, "broken.txtpb")
  assert "XLA could not use this description" in proc.stderr


def test_a_plugin_that_does_not_match_jaxlib(monkeypatch, capsys):
  if compile_lib.plugin_installed("xla_rocm7") is False:
    monkeypatch.setattr(compile_lib, "plugin_installed", lambda name: True)
  monkeypatch.setattr(rocm_aot, "installed_versions", lambda: {
      "jax-rocm7-plugin": "0.11.2", "jax-rocm7-pjrt": "0.11.2", "jaxlib": "0.10.2"})
  assert compile_lib.main(["jaxbench compile", "--config=configs/mpt.py:nano",
                           "--target=mi300x"]) == 2
  err = capsys.readouterr().err
  assert len(err.strip().splitlines()) == 1
  assert "does not match jaxlib 0.10.2" in err and 'jax-rocm7-plugin==0.10.2' in err


def test_a_missing_plugin_names_the_extra(monkeypatch):
  monkeypatch.setattr(compile_lib, "plugin_installed", lambda name: False)
  assert "rocm-aot" in compile_lib.plugin_problem("rocm")
  assert "jax-rocm7-pjrt not installed" in rocm_aot.version_problem(
      {"jax-rocm7-plugin": "0.10.2", "jax-rocm7-pjrt": None, "jaxlib": "0.10.2"})


def test_stand_ins_are_refused_where_an_amd_gpu_could_be_reached(monkeypatch):
  if PROBLEM:
    pytest.skip(PROBLEM)
  monkeypatch.setattr(rocm_aot, "amd_gpu_visible", lambda: True)
  monkeypatch.setattr(rocm_aot, "unresolved", lambda binaries, folder: ["libamdhip64.so.7"])
  with pytest.raises(compile_lib.ConfigError, match="this machine has an AMD GPU"):
    rocm_aot.prepare()


def test_shipped_amd_targets_state_their_facts():
  mi300x, mi250x, mi250 = (compile_lib.read_target(t) for t in ("mi300x", "mi250x", "mi250"))
  assert mi300x.memory_bytes == 206141652992 < 192 * 2**30 + 2**30  # not OpenXLA's 252 GiB
  assert mi300x.bandwidth_bytes_per_s == 5.3e12
  for t, cus in ((mi250x, "110"), (mi250, "104")):
    assert t.platform == "rocm" and t.memory_bytes == 68702699520
    assert t.bandwidth_bytes_per_s == 1.6384e12 and compile_lib._field(t.text, "core_count") == cus
    assert rocm_aot.gcn_arch(t.text) == ("gfx90a", {"sramecc": "+", "xnack": "-"})
  a100_40 = compile_lib.read_target("a100-40")
  assert a100_40.device_name == "NVIDIA A100-SXM4-40GB" and a100_40.memory_bytes == 42505273344


@needs_rocm
def test_a_compile_only_sweep_finds_the_largest_batch_for_an_mi250x_gcd(tmp_path):
  """`jaxbench sweep --compile_only=mi250x --max_batch`: every probe is the step compiled for one
  MI250X GCD by the ROCm compiler (two here: 1x and 2x of batch 4, the limit)."""
  path = tmp_path / "aot.py"
  path.write_text('def get_sweep():\n  return {"base": "configs/mpt.py:nano", "axes": '
                  '{"batch_size": [4]}, "max_batch": {"limit": 2}}\n')
  env = cli_env(tmp_path, JAXBENCH_CACHE_DIR=CACHE.setdefault("dir", str(tmp_path / "cache")))
  proc = subprocess.run([sys.executable, "-m", "jaxbench", "sweep", f"--sweep={path}",
                         f"--out={tmp_path / 'out'}", "--compile_only=mi250x", "--max_batch"],
                        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  (result,) = [json.loads(line) for line in open(tmp_path / "out" / "results.jsonl")]
  assert result["status"] == "ok", result
  assert result["compile_only"]["target"] == "mi250x" and result["backend"] == "rocm"
  assert result["device_kind"] == "AMD Instinct MI250X/MI250" and result["fits"] is True
  assert result["max_batch"]["batch_size"] == 8
  assert "nothing ran" in result["peak_memory_source"]
