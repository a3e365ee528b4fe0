"""Tensor parallelism in the twin (twin/parallelize.py): four torchrun processes (gloo) train one
process's curve for both model families on both four-device meshes with mesh.tensor=2; the JAX
run of the same mesh on four host devices agrees with them, and `jaxbench compare` sets the two
frameworks' collectives side by side; a tensor-parallel checkpoint resumes in one process and
exports; bad meshes exit 2 before any process group starts."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import cli_env, read_json, run_cli

from jaxbench import compare, config, export_hf, sharding

torch = pytest.importorskip("torch")
from jaxbench.twin import collectives  # noqa: E402
from jaxbench.twin import model as twin_model  # noqa: E402
from jaxbench.twin import parallelize  # noqa: E402
from jaxbench.twin import train as twin_train  # noqa: E402

torch.set_num_threads(1)  # the test machine is shared (see test_twin.py)

STEPS = 4
FAMILIES = {"mpt": "mpt", "llama-gqa": "llama"}  # llama nano: 4 query heads over 2 kv heads
MESHES = {"fsdp2xtensor2": (1, 2, 2), "data2xtensor2": (2, 1, 2)}  # (data, fsdp, tensor)
FLAGS = [f"--config.steps={STEPS}", "--config.log_every=0", "--config.warmup_steps_excluded=1",
         "--config.peak_tflops=0", "--config.checkpoint.every=2"]


def make_config(family, **overrides):
  return config.load_with_overrides(f"configs/{family}.py:nano", overrides)


def losses(run_dir):
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    return [json.loads(line)["loss"] for line in f]


def torchrun(args, tmp_path, nproc=4):
  return subprocess.run(
      [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
       "-m", "jaxbench", "train", *args, "--config.framework=torch"],
      cwd=str(tmp_path), env=cli_env(tmp_path, OMP_NUM_THREADS=1), capture_output=True, text=True,
      timeout=900)


def mesh_flags(mesh):
  return [f"--config.mesh.{axis}={size}" for axis, size in zip(("data", "fsdp", "tensor"), mesh)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
  """Each family's twin run in one process: the curve every mesh must train."""
  tmp = tmp_path_factory.mktemp("one")
  for name, family in FAMILIES.items():
    c = make_config(family, steps=STEPS, log_every=0, warmup_steps_excluded=1, peak_tflops=0.2,
                    framework="torch", **{"checkpoint.every": 2})
    twin_train.run(c, str(tmp / name))
  return tmp


@pytest.fixture(scope="module")
def four_processes(tmp_path_factory):
  """Runs of four torchrun processes, made when first asked for: {(family, mesh): run dir}."""
  tmp = tmp_path_factory.mktemp("four")
  made = {}

  def get(name, mesh_name):
    if (name, mesh_name) not in made:
      run_dir = tmp / f"{name}-{mesh_name}"
      proc = torchrun([f"--config=configs/{FAMILIES[name]}.py:nano", *FLAGS,
                       *mesh_flags(MESHES[mesh_name]), f"--workdir={run_dir}"], tmp)
      assert proc.returncode == 0, proc.stderr[-3000:]
      made[name, mesh_name] = run_dir
    return made[name, mesh_name]

  return get


@pytest.mark.parametrize("mesh_name", list(MESHES))
@pytest.mark.parametrize("name", list(FAMILIES))
def test_four_processes_train_the_one_process_curve(one_process, four_processes, name, mesh_name):
  run_dir = four_processes(name, mesh_name)
  got, expected = losses(run_dir), losses(one_process / name)
  assert len(got) == STEPS
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  info = read_json(run_dir / "run.json")
  data, fsdp, tensor = MESHES[mesh_name]
  assert info["mesh"] == {"data": data, "fsdp": fsdp, "tensor": tensor}
  assert info["torch"]["parallel"] == ("fsdp+tensor" if fsdp > 1 else "ddp+tensor")
  placements = info["placements"]
  assert placements["mesh"] == info["mesh"]
  params = placements["params"]
  # The JAX rules' split, in torch's [out, in] weights: heads and MLP columns, then rows.
  for param, placement in (("layers.0.attention.query.weight", "tensor: Shard(dim=0)"),
                           ("layers.0.attention.key.weight", "tensor: Shard(dim=0)"),
                           ("layers.0.attention.out.weight", "tensor: Shard(dim=1)"),
                           ("layers.0.mlp.up.weight", "tensor: Shard(dim=0)"),
                           ("layers.0.mlp.down.weight", "tensor: Shard(dim=1)"),
                           ("embedding.weight", "tensor: Shard(dim=0)"),
                           ("final_norm.weight", "tensor: Replicate()")):
    assert placement in params[param], (param, params[param])
  assert ("lm_head" in placements["tensor_plan"]) == (name == "llama-gqa")
  # The first step's collectives, counted: tensor parallelism's all-reduces at least.
  counted = info["collectives"]
  assert counted["step"] == 1 and counted["per_device"]["all-reduce"]["count"] > 0
  with open(run_dir / "metrics.jsonl") as f:
    first = json.loads(f.readline())
  assert first["collectives_counted"] and not first["timed"]


def test_jax_on_the_same_mesh_agrees_and_compare_shows_both_collectives(four_processes, tmp_path,
                                                                       capsys):
  twin = four_processes("llama-gqa", "fsdp2xtensor2")
  # Unrolled layers: XLA's HLO then holds every layer's collectives, not one loop body's.
  proc = run_cli(["train", "--config=configs/llama.py:nano", *FLAGS, *mesh_flags((1, 2, 2)),
                  "--config.model.scan_layers=False", f"--workdir={tmp_path / 'jax'}"], tmp_path,
                 XLA_FLAGS="--xla_force_host_platform_device_count=4", OMP_NUM_THREADS=1)
  assert proc.returncode == 0, proc.stderr[-3000:]
  np.testing.assert_allclose(losses(twin), losses(tmp_path / "jax"), rtol=1e-4)
  assert compare.main(["jaxbench compare", str(tmp_path / "jax"), str(twin),
                       "--labels=jax,torch"]) == 0
  out = capsys.readouterr().out
  table = out[out.index("collectives per device"):]
  assert "XLA's compiled HLO" in table and "calls issued in step 1" in table
  all_reduce = next(line for line in table.splitlines() if line.startswith("all-reduce"))
  assert all_reduce.count(" x, ") == 2, all_reduce  # both frameworks all-reduce


def test_a_tensor_parallel_checkpoint_resumes_in_one_process(one_process, four_processes,
                                                             tmp_path, capsys):
  # What a kill after step 3 of the fsdp x tensor run leaves: its checkpoint of step 2.
  run_dir = tmp_path / "resumed"
  shutil.copytree(four_processes("mpt", "fsdp2xtensor2"), run_dir)
  shutil.rmtree(run_dir / "checkpoints" / str(STEPS))
  (run_dir / "summary.json").unlink()
  c = make_config("mpt", steps=STEPS, log_every=0, warmup_steps_excluded=1, peak_tflops=0.2,
                  framework="torch", **{"checkpoint.every": 2})
  # DCP reshards; the digest of every tensor, summed over the shards that processes held at save
  # time (twin/checkpoint._local_share: Shard on fsdp and tensor), is checked against the whole
  # tensors restored here: a shard counted twice or not at all would be exit 2.
  summary = twin_train.run(c, str(run_dir))
  assert "resuming from the checkpoint of step 2" in capsys.readouterr().out
  assert summary["status"] == "finished" and summary["resumed_from_step"] == 2
  np.testing.assert_allclose(losses(run_dir), losses(one_process / "mpt"), rtol=1e-5)


def test_a_tensor_parallel_checkpoint_reshards_onto_another_mesh_compiled(one_process,
                                                                          four_processes, tmp_path):
  # fsdp 2 x tensor 2's checkpoint of step 2, resumed by tensor parallelism alone over 2
  # processes, its blocks torch.compile'd (one run for both: CI's minutes are few).
  run_dir = tmp_path / "resharded"
  shutil.copytree(four_processes("mpt", "fsdp2xtensor2"), run_dir)
  shutil.rmtree(run_dir / "checkpoints" / str(STEPS))
  (run_dir / "summary.json").unlink()
  proc = torchrun(["--config=configs/mpt.py:nano", *FLAGS, *mesh_flags((1, 1, 2)),
                   "--config.torch.compile=True", f"--workdir={run_dir}"], tmp_path, nproc=2)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "resuming from the checkpoint of step 2" in proc.stdout
  info = read_json(run_dir / "run.json")
  assert info["torch"]["parallel"] == "tensor" and info["torch"]["compile"].startswith("torch.compile")
  # Inductor's kernels may add in another order than eager's: 1e-4.
  np.testing.assert_allclose(losses(run_dir), losses(one_process / "mpt"), rtol=1e-4)


def test_export_hf_reads_a_tensor_parallel_checkpoint(one_process, four_processes, tmp_path):
  run_dir = four_processes("llama-gqa", "data2xtensor2")
  cfg, state, step = export_hf.load_twin_state(str(run_dir))
  _, expected, _ = export_hf.load_twin_state(str(one_process / "llama-gqa"))
  assert step == STEPS and set(state) == set(expected)
  for name in state:
    np.testing.assert_allclose(state[name], expected[name], rtol=1e-4, atol=1e-6, err_msg=name)
  assert export_hf.main(["jaxbench export-hf", f"--workdir={run_dir}",
                         f"--out={tmp_path / 'hf'}"]) == 0
  assert sorted(os.listdir(tmp_path / "hf")) == ["config.json", "model.safetensors"]


@pytest.mark.parametrize("family,world,tensor,needle", [
    ("mpt", 3, 3, "model.n_heads: 4 is not divisible by mesh.tensor=3"),
    # Fewer kv heads than tensor processes: the JAX rules split kv_heads over tensor, so neither
    # framework runs it.
    ("llama", 4, 4, "model.n_kv_heads: 2 is not divisible by mesh.tensor=4"),
])
def test_bad_meshes_exit_2_before_any_process_group(tmp_path, monkeypatch, capsys, family, world,
                                                    tensor, needle):
  # As torchrun starts each process: were a process group started, this one would wait for the
  # other ranks (none come).
  monkeypatch.setenv("WORLD_SIZE", str(world))
  monkeypatch.setenv("RANK", "1")
  c = make_config(family, framework="torch", **{"mesh.tensor": tensor, "mesh.data": 1})
  assert twin_train.main(c, str(tmp_path / "run")) == 2
  err = capsys.readouterr().err
  assert needle in err and "allowed mesh.tensor here" in err and len(err.strip().splitlines()) == 1
  assert not torch.distributed.is_initialized() and not (tmp_path / "run").exists()


def test_data_beside_tensor_parallelism_without_fsdp2s_replicate_exits_2(monkeypatch):
  import importlib.util
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == twin_train.REPLICATE else find_spec(name, *a))
  c = make_config("mpt", framework="torch")
  mesh = {"data": 2, "fsdp": 1, "tensor": 2}
  with pytest.raises(twin_train.ConfigError, match="mesh.fsdp=-1 mesh.data=1"):
    twin_train.resolve_parallel(c, 4, mesh)
  assert twin_train.resolve_parallel(c, 4, {"data": 1, "fsdp": 2, "tensor": 2}) == "fsdp+tensor"
  assert twin_train.resolve_parallel(c, 2, {"data": 1, "fsdp": 1, "tensor": 2}) == "tensor"


# --- the plan and the counter, without processes --------------------------------------------------

def test_the_tensor_plan_mirrors_the_sharding_rules():
  rules = dict(sharding.LOGICAL_AXIS_RULES)
  for pattern, style, mirrors in parallelize.TENSOR_PLAN:
    axis, _, mesh_axis = mirrors.split(" (")[0].split(";")[0].partition(" -> ")
    assert str(rules[axis]) == mesh_axis, (pattern, mirrors)
    assert (mesh_axis == "tensor") == (style != "replicate"), pattern
  mpt = twin_model.Transformer(_model_config("mpt"))
  llama = twin_model.Transformer(_model_config("llama"))
  assert "layers.*.mlp.gate" not in parallelize.tensor_plan(mpt)  # GELU MLP, tied head
  assert "lm_head" not in parallelize.tensor_plan(mpt)
  assert {"layers.*.mlp.gate", "lm_head"} <= set(parallelize.tensor_plan(llama))


def _model_config(family):
  from jaxbench import model
  return model.ModelConfig.from_config(make_config(family), "xla")


def test_collective_kinds_and_bytes():
  ops = torch.ops
  assert collectives.kind_of(ops._c10d_functional.all_reduce.default) == "all-reduce"
  assert collectives.kind_of(ops._c10d_functional.all_gather_into_tensor.default) == "all-gather"
  assert collectives.kind_of(ops._c10d_functional.reduce_scatter_tensor.default) == "reduce-scatter"
  assert collectives.kind_of(ops.c10d.allreduce_.default) == "all-reduce"
  assert collectives.kind_of(ops.c10d._allgather_base_.default) == "all-gather"
  assert collectives.kind_of(ops.c10d._reduce_scatter_base_.default) == "reduce-scatter"
  assert collectives.kind_of(ops.c10d.broadcast_.default) == "broadcast"
  assert collectives.kind_of(ops._c10d_functional.wait_tensor.default) is None
  assert collectives.kind_of(ops.aten.mm.default) is None
  # An in-place process-group call's bytes are its output's: the gathered array.
  gathered, shard = torch.zeros(8), torch.zeros(2)
  assert collectives.result_bytes(ops.c10d._allgather_base_.default, (gathered, shard), None) == 32
  assert collectives.result_bytes(ops._c10d_functional.reduce_scatter_tensor.default,
                                  (gathered,), shard) == 8
  summary = collectives.summarize([("all-reduce", 4), ("all-reduce", 8), ("all-gather", 32)])
  assert summary["all-reduce"] == {"count": 2, "bytes": 12}
  assert summary["reduce-scatter"] == {"count": 0, "bytes": 0}
