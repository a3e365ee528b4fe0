"""model.attention=pallas: Pallas's Triton flash attention, one fused kernel for both GPU vendors.

It equals the XLA attention on the CPU (Pallas's interpreter), forward and backward, grouped-query
heads included, and the full train step with it compiles deviceless for sm_90a, gfx90a and gfx942
(the `cuda-aot` and `rocm-aot` extras, which CI installs)."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from conftest import cli_env
from jaxbench import compile as compile_lib
from jaxbench import config as config_lib
from jaxbench import compat, model, program, rocm_aot

# jax 0.12.1 removed Pallas's Triton attention: there the key is refused (the last test), and the
# kernel's tests skip.
MISSING = compat.pallas_triton_attention()[1]
needs_pallas = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
HAVE_BOTH = (compile_lib.plugin_problem("cuda") is None and compile_lib.plugin_problem("rocm") is None
             and rocm_aot.toolchain_problem() is None)


@needs_pallas
@pytest.mark.parametrize("heads, kv_heads", [(4, 4), (4, 2)])
def test_pallas_attention_equals_the_xla_attention_forward_and_backward(heads, kv_heads):
  b, s, d = 2, 128, 16
  q, g = (jax.random.normal(jax.random.key(i), (b, s, heads, d)) for i in (1, 4))
  k, v = (jax.random.normal(jax.random.key(i), (b, s, kv_heads, d)) for i in (2, 3))

  def run(name):
    out, vjp = jax.vjp(lambda q, k, v: model.ATTENTION_KERNELS[name](q, k, v, None), q, k, v)
    return (out, *vjp(g))

  for xla, pallas in zip(run("xla"), run("pallas-interpret")):
    assert pallas.shape == xla.shape
    assert float(jnp.max(jnp.abs(pallas - xla))) < 1e-4 * float(jnp.max(jnp.abs(xla)))


@needs_pallas
def test_pallas_is_chosen_as_asked_and_refused_where_it_cannot_run():
  c, _ = config_lib.parse_flags(["t", "--config=configs/mpt.py:tiny", "--config.model.attention=pallas"])
  implementation, reason = program.choose_attention(c, jax.devices("cpu")[0])
  assert implementation == "pallas-interpret" and "interpreted on the CPU" in reason
  for override, needle in (("--config.seq_len=96", "multiple of 32, and of 64"),
                           ("--config.model.position=alibi", "ALiBi")):
    c, _ = config_lib.parse_flags(["t", "--config=configs/mpt.py:tiny",
                                   "--config.model.attention=pallas", override])
    with pytest.raises(config_lib.ConfigError, match=needle):
      program.choose_attention(c, jax.devices("cpu")[0])


@needs_pallas
@pytest.mark.skipif(not HAVE_BOTH, reason="needs the cuda-aot and rocm-aot extras")
def test_the_step_with_pallas_attention_compiles_for_both_vendors(tmp_path):
  """One command, three targets, FSDP over two devices: the same kernel for each, sharded by
  shard_map (no collective beyond FSDP's own)."""
  proc = subprocess.run(
      [sys.executable, "-m", "jaxbench", "compile", "--config=configs/mpt.py:tiny",
       "--config.dtype=bfloat16", "--config.model.attention=pallas", "--config.mesh.data=1",
       "--config.mesh.fsdp=2", "--topology=1x1x2", "--target=h100,mi250x,mi300x", "--json"],
      cwd=str(tmp_path), env=cli_env(tmp_path), capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  reports = json.loads(proc.stdout)["targets"]
  assert [r["target"]["arch"] for r in reports] == ["sm_90a", "gfx90a", "gfx942"]
  for r in reports:
    assert r["compiled"] and r["attention"]["implementation"] == "pallas", r.get("error")
    # forward, and the backward's dK/dV and dQ kernels
    assert r["kernels"].get("Pallas Triton kernel (__gpu$xla.gpu.triton)") == 3, r["kernels"]
    assert r["collectives"] == reports[0]["collectives"]
  for r in reports[1:]:
    assert r["rocm"]["code_objects"]["ok"]


@needs_pallas
def test_portability_lowers_the_gpu_kernel_for_cuda_and_rocm(tmp_path):
  """On this CPU the step runs Pallas's interpreter; the CUDA and ROCm rows lower the Triton kernel
  a GPU runs (and say that jax.export gives its custom call no compatibility guarantee)."""
  from conftest import run_cli
  proc = run_cli(["portability", "--config=configs/mpt.py:nano", "--config.model.attention=pallas",
                  "--platforms=cpu,cuda,rocm", "--rocm_target=none", "--json=r.json"], tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  cpu, cuda, rocm = json.loads((tmp_path / "r.json").read_text())["platforms"]
  assert cpu["attention"] == "pallas-interpret" and cpu["custom_calls"] == {}
  for row in (cuda, rocm):
    assert row["attention"] == "pallas" and row["custom_calls"] == {"__gpu$xla.gpu.triton": 3}


@pytest.mark.skipif(MISSING is None, reason="this JAX has Pallas's Triton attention")
def test_pallas_is_refused_before_anything_compiles_where_jax_has_none(tmp_path):
  # CI's newest environment (jax 0.12.1) met an ImportError inside the traced model instead.
  c, _ = config_lib.parse_flags(["t", "--config=configs/mpt.py:tiny", "--config.model.attention=pallas"])
  with pytest.raises(config_lib.ConfigError, match="needs jax 0.12.0 or older"):
    program.choose_attention(c, jax.devices("cpu")[0])
  proc = subprocess.run([sys.executable, "-m", "jaxbench", "train", "--config=configs/mpt.py:nano",
                         "--config.model.attention=pallas", f"--workdir={tmp_path / 'run'}"],
                        cwd=str(tmp_path), env=cli_env(tmp_path), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 2 and "needs jax 0.12.0 or older" in proc.stderr, proc.stderr[-2000:]
  assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()
