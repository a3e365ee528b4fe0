"""jaxbench/compat.py on the installed JAX: each private or moved API still answers (CI runs this on
the oldest and the newest JAX the ranges admit; a release that moves one fails here, by name)."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

import jaxbench
from jaxbench import compat


def test_backends_started_is_false_before_the_first_backend_and_true_after():
  code = ("from jaxbench import compat; before = compat.backends_started(); import jax; "
          "jax.devices(); print(before, compat.backends_started())")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       check=True).stdout.split()
  assert out == ["False", "True"]


def test_cost_analysis_of_a_compiled_module_counts_its_flops():
  n = 64
  compiled = jax.jit(lambda a, b: a @ b).lower(jnp.ones((n, n)), jnp.ones((n, n))).compile()
  (module,) = compiled.runtime_executable().hlo_modules()
  cost = compat.hlo_module_cost_analysis(jax.devices("cpu")[0].client, module)
  assert cost["flops"] == pytest.approx(2 * n**3, rel=0.01) and cost["bytes accessed"] > 0


def test_cuda_plugin_versions_are_numbers_or_none():
  runtime, dnn = compat.cuda_plugin_versions()
  assert all(v is None or (isinstance(v, int) and v > 0) for v in (runtime, dnn))
  if not jaxbench.plugin_installed("xla_cuda13"):  # the test extra's CUDA plugin
    return
  assert runtime is not None and runtime >= 13000 and dnn is not None and dnn >= 90000


def test_dump_flags_ask_for_the_ptx_and_keep_the_users_own():
  assert compat.xla_flags_with_dump("", "/d") == "--xla_dump_to=/d --xla_dump_emitter_re=ptx"
  assert (compat.xla_flags_with_dump(" --xla_gpu_autotune_level=0 ", "/d")
          == "--xla_gpu_autotune_level=0 --xla_dump_to=/d --xla_dump_emitter_re=ptx")
  assert (compat.xla_flags_with_dump("--xla_dump_emitter_re=.*", "/d")
          == "--xla_dump_emitter_re=.* --xla_dump_to=/d")


def test_the_compilation_cache_is_left_off_only_where_a_release_hangs_with_it():
  assert compat.jax_release()[:2] == tuple(int(p) for p in jax.__version__.split(".")[:2])
  assert compat.compilation_cache_hang("cpu", 1) is None
  assert compat.compilation_cache_hang("cuda", 2) is None
  hangs = compat.compilation_cache_hang("cpu", 2)
  assert (hangs is not None) == (compat.jax_release() >= (0, 12, 1))


def test_the_public_apis_used_directly_are_where_they_were():
  """compat.py's docstring lists these as unchanged over the supported releases."""
  from jax.experimental import multihost_utils, topologies
  assert callable(multihost_utils.broadcast_one_to_all)
  assert callable(multihost_utils.process_allgather)
  assert callable(topologies.get_topology_desc)
  assert callable(jax.export.export) and callable(jax.export.DisabledSafetyCheck.custom_call)


def test_no_jaxbench_code_uses_what_the_installed_jax_deprecates():
  """Each JAX module lists the names it deprecates in its `_deprecations` table; none may be used
  (jax 0.12 deprecated jax.sharding.SingleDeviceSharding, which program._cudnn_probe built on every
  NVIDIA GPU; it warned once there and would break when removed)."""
  import importlib
  import pathlib
  import re
  root = pathlib.Path(__file__).resolve().parents[1]
  used = set()
  for path in [*(root / "jaxbench").rglob("*.py"), *(root / "benchmarks").glob("*.py")]:
    text = path.read_text()
    used |= set(re.findall(r"\b(jax(?:\.[a-z_]+)*)\.([A-Za-z_]\w*)", text))
    for module, names in re.findall(r"^\s*from (jax[\w.]*) import \(?([\w, ]+)", text, re.M):
      used |= {(module, n.split(" as ")[0].strip()) for n in names.split(",") if n.strip()}
  deprecated = []
  for module, name in sorted(used):
    try:
      table = getattr(importlib.import_module(module), "_deprecations", {})
    except ImportError:  # a name, not a module (jax.numpy.bfloat16), or an absent plugin
      continue
    if name in table:
      deprecated.append(f"{module}.{name}")
  assert deprecated == []


def test_no_private_jax_api_outside_compat():
  """Every private JAX API goes through compat.py, where the releases that need it are named."""
  import pathlib
  root = pathlib.Path(__file__).resolve().parents[1] / "jaxbench"
  users = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                 if p.name != "compat.py" and any(
                     line.lstrip().startswith(("import jax._src", "from jax._src"))
                     or "jax._src." in line.split("#")[0] and "import" in line
                     for line in p.read_text().splitlines()))
  assert users == []


def test_pallas_triton_attention_is_found_or_says_why():
  module, why = compat.pallas_triton_attention()
  if compat.jax_release() <= (0, 12, 0):
    assert why is None and callable(module.mha) and module.BlockSizes
  else:  # 0.12.1 removed it
    assert module is None and "needs jax 0.12.0 or older" in why
