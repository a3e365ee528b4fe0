"""Meshes over 8 host devices: the same losses as one device, real shards, the right collectives.

Each test runs its body in a fresh process with --xla_force_host_platform_device_count=8, since
the device count is fixed when JAX starts."""

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import cli_env
from jaxbench import config
from jaxbench.errors import ConfigError

# fsdp x tensor without data is also restored onto in test_checkpoint (fsdp4 x tensor2).
MESHES = [(8, 1, 1), (1, 8, 1), (1, 1, 8), (2, 2, 2)]

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax
    jax.config.update("jax_default_matmul_precision", "highest")
    from jaxbench import config, data, hlo, program

    def nano(mesh, steps=5):
      c = config.load_config_file("configs/mpt.py:nano")
      c.model.n_heads, c.model.n_kv_heads, c.model.d_ff = 8, 8, 256   # divisible by tensor=8
      c.model.attention_block = 16  # the attention in 4 blocks of query rows, heads sharded
      c.steps, c.warmup_steps_excluded, c.peak_tflops, c.log_every = steps, 0, 1.0, 0
      c.mesh.data, c.mesh.fsdp, c.mesh.tensor = mesh
      return c

    results = {}
    for mesh in [(1, 1, 1)] + [tuple(m) for m in json.loads(sys.argv[1])]:
      devices = jax.devices()[:1] if mesh == (1, 1, 1) else None
      c = nano(mesh)
      s = program.build(c, devices)
      state = program.init_state(s)
      batch = jax.device_put(data.SyntheticData(c).batch(0), s.batch_sharding)
      compiled = program.lower_step(s, state, batch).compile()
      step = program.jit_step(s)
      losses = []
      for i in range(c.steps):
        batch = jax.device_put(data.SyntheticData(c).batch(i), s.batch_sharding)
        state, metrics = compiled(state, batch)
        losses.append(float(metrics["loss"]))
      emb = state.params["embedding"]
      results[str(mesh)] = {
          "losses": losses,
          "collectives": hlo.collectives(compiled.as_text()),
          "embedding_shard": list(emb.addressable_shards[0].data.shape),
          "embedding_shape": list(emb.shape),
          "mlp_up_shard": list(state.params["layers"]["mlp"]["up"]["kernel"].addressable_shards[0].data.shape),
          "mu_shard": list(state.opt_state[1][0].mu["embedding"].addressable_shards[0].data.shape),
      }
    print("RESULTS " + json.dumps(results))
""")


@pytest.fixture(scope="module")
def mesh_results(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("mesh")
  proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(MESHES)], cwd=tmp,
                        env=cli_env(tmp, XLA_FLAGS="--xla_force_host_platform_device_count=8"),
                        capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULTS ")][-1]
  return json.loads(line[len("RESULTS "):])


@pytest.mark.parametrize("mesh", MESHES, ids=[f"data{d}-fsdp{f}-tensor{t}" for d, f, t in MESHES])
def test_mesh_losses_equal_one_device(mesh_results, mesh):
  reference = mesh_results[str((1, 1, 1))]["losses"]
  losses = mesh_results[str(mesh)]["losses"]
  assert len(losses) == len(reference) == 5
  for a, b in zip(losses, reference):
    assert abs(a - b) <= 1e-5 * abs(b), (mesh, losses, reference)


def test_fsdp_shards_params_and_optimizer_state(mesh_results):
  r = mesh_results[str((1, 8, 1))]
  vocab, embed = r["embedding_shape"]
  assert r["embedding_shard"] == [vocab, embed // 8]  # embed -> fsdp
  assert r["mu_shard"] == [vocab, embed // 8]  # AdamW moments sharded like their params
  t = mesh_results[str((2, 2, 2))]
  assert t["embedding_shard"] == [vocab // 2, embed // 2]  # vocab -> tensor, embed -> fsdp
  layers, d_model, d_ff = 2, 64, 256
  assert t["mlp_up_shard"] == [layers, d_model // 2, d_ff // 2]  # data does not shard params


def test_collectives_follow_the_mesh(mesh_results):
  def count(mesh, kind):
    return mesh_results[str(mesh)]["collectives"][kind]["count"]

  assert all(v["count"] == 0 for v in mesh_results[str((1, 1, 1))]["collectives"].values())
  assert count((8, 1, 1), "all-reduce") > 0 and count((8, 1, 1), "all-gather") == 0
  # FSDP gathers params. (XLA's CPU backend writes reduce-scatter as all-reduce + dynamic-slice,
  # so reduce-scatter is not asserted here.)
  assert count((1, 8, 1), "all-gather") > 0
  assert count((1, 1, 8), "all-reduce") > 0
  # Tensor parallelism Megatron-style: heads and d_ff split, activations all-reduced, nothing
  # gathered (a reshape merging the attention's sharded dims once cost two all-gathers a layer).
  assert count((1, 1, 8), "all-gather") == 0


MESH_ERRORS = [
    (["--config.mesh.data=3"], "mesh: data=3 x fsdp=1 x tensor=1 = 3 devices, but there are 8"),
    (["--config.mesh.fsdp=-1"], "only one mesh axis may be -1"),
    (["--config.mesh.data=1", "--config.mesh.tensor=8"], "model.n_heads: 4 is not divisible by mesh.tensor=8"),
    (["--config.mesh.tensor=2", "--config.model.d_ff=129"], "model.d_ff: 129 is not divisible by mesh.tensor=2"),
    (["--config.batch_size=4"], "batch_size: 4 is not divisible by mesh.data*mesh.fsdp*microbatches"),
    (["--config.microbatches=2"], "batch_size: 8 is not divisible"),
    (["--config.mesh.data=1", "--config.mesh.fsdp=8", "--config.model.d_model=68"], "model.d_model"),
]


@pytest.mark.parametrize("args,needle", MESH_ERRORS, ids=[" ".join(a) for a, _ in MESH_ERRORS])
def test_mesh_errors_are_caught_before_compiling(args, needle):
  c, _ = config.parse_flags(["test", "--config=configs/mpt.py:nano", *args])
  with pytest.raises(ConfigError) as e:
    config.validate(c, 8)
  assert needle in str(e.value)


def test_a_mesh_error_exits_2_with_one_line(tmp_path):
  args, needle = MESH_ERRORS[0]
  proc = subprocess.run([sys.executable, "-m", "jaxbench", "train", "--config=configs/mpt.py:nano",
                         *args, "--workdir=run"], cwd=tmp_path,
                        env=cli_env(tmp_path, XLA_FLAGS="--xla_force_host_platform_device_count=8"),
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
  assert not (tmp_path / "run").exists()
