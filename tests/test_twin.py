"""The PyTorch twin is the JAX model: same logits, same first gradients, same ten-step loss curve
from the same weights and data; its run directory is read by every jaxbench tool; torchrun with
FSDP2 (gloo on CPU) trains the same curve as one process."""

import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import NO_TORCH, cli_env, read_json, run_cli

from jaxbench import compare, config, model, optim, step, train
from jaxbench.twin import convert

torch = pytest.importorskip("torch", reason=NO_TORCH)
from jaxbench.twin import model as twin_model  # noqa: E402
from jaxbench.twin import train as twin_train  # noqa: E402

# The machine running the tests is shared: one torch thread avoids OpenMP barrier stalls there.
torch.set_num_threads(1)

PARITY_CASES = {
    "mpt-nano": ("mpt", "nano", {}),
    "mpt-nano-alibi-bias-unrolled": ("mpt", "nano", {"model.position": "alibi", "model.bias": True,
                                                     "model.scan_layers": False}),
    "llama-nano-gqa": ("llama", "nano", {}),  # 4 query heads over 2 key/value heads
    # The attention in blocks of 24, 24 and 16 query rows (kernels.causal_attention).
    "mpt-nano-alibi-blocks": ("mpt", "nano", {"model.position": "alibi",
                                              "model.attention_block": 24}),
    "llama-nano-gqa-blocks": ("llama", "nano", {"model.attention_block": 24}),
    # The JAX model in plain jnp with autodiff: the twin, which has no custom kernels, is the same.
    "mpt-nano-reference": ("mpt", "nano", {"model.impl": "reference"}),
}


def make_config(family, preset, **overrides):
  return config.load_with_overrides(f"configs/{family}.py:{preset}", overrides)


def relative_error(a, b, floor=0.0) -> float:
  """max |a - b| over max |a| (or `floor` where larger): relative to the tensor's scale, so
  near-zero entries, or a gradient that is zero in exact arithmetic (the key bias's: softmax
  ignores a per-row constant), do not count as large relative errors."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / max(np.abs(a).max(), floor))


def random_params(cfg, seed=0):
  """Params of the model's shapes, every leaf random (norm scales and biases too), no compile."""
  shapes = nn.unbox(jax.eval_shape(lambda: model.Transformer(cfg).init(
      jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))["params"])
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (1.0 * (len(s.shape) == 1)
                                 + rng.normal(size=s.shape) * 0.05).astype(np.float32), shapes)


@pytest.fixture(scope="module", params=list(PARITY_CASES), ids=list(PARITY_CASES))
def pair(request):
  """JAX's logits and gradients, and the twin's, from the same params and tokens."""
  family, preset, overrides = PARITY_CASES[request.param]
  c = make_config(family, preset, **overrides)
  cfg = model.ModelConfig.from_config(c, "xla")
  jax_model = model.Transformer(cfg)
  params = random_params(cfg)
  tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (2, c.seq_len + 1)).astype(np.int32)

  def loss_fn(p):
    logits = jax_model.apply({"params": p}, tokens[:, :-1])
    return step.cross_entropy(logits, tokens[:, 1:]), logits

  with jax.default_matmul_precision("highest"):
    (_, logits), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  twin = twin_model.Transformer(cfg)
  twin.load_state_dict({k: torch.from_numpy(v) for k, v in convert.jax_to_torch(params, cfg).items()})
  t = torch.from_numpy(tokens).long()
  twin_logits = twin(t[:, :-1])
  twin_model.cross_entropy(twin_logits, t[:, 1:]).backward()
  twin_grads = convert.torch_to_jax({n: p.grad for n, p in twin.named_parameters()}, cfg,
                                    stacked="layers" in params)
  return logits, twin_logits.detach().numpy(), grads, twin_grads


def test_logits_agree(pair):
  expected, got = pair[:2]
  assert got.shape == expected.shape
  assert relative_error(expected, got) < 1e-5


def test_first_step_gradients_agree(pair):
  expected, got = pair[2:]
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(expected))
  errors = jax.tree.map(lambda a, b: relative_error(a, b, floor=1e-3 * scale), expected, got)
  assert max(jax.tree.leaves(errors)) < 1e-4, errors


def test_converter_round_trips_both_layouts():
  c = make_config("llama", "nano", **{"model.bias": True})
  cfg = model.ModelConfig.from_config(c, "xla")
  params = random_params(cfg)
  state = convert.jax_to_torch(params, cfg)
  assert set(state) == set(twin_model.Transformer(cfg).state_dict())
  for stacked in (True, False):
    back = convert.torch_to_jax(state, cfg, stacked=stacked)
    same = params if stacked else model.unstack_layers(params, cfg.n_layers)
    jax.tree.map(np.testing.assert_array_equal, same, back)


def test_weight_decay_mask_matches_optax():
  c = make_config("mpt", "nano", **{"model.bias": True})
  cfg = model.ModelConfig.from_config(c, "xla")
  params = nn.unbox(jax.eval_shape(lambda: model.Transformer(cfg).init(
      jax.random.key(0), jnp.zeros((1, 8), jnp.int32)))["params"])
  mask = optim.decay_mask(params, decay_embeddings=False)
  twin = twin_model.Transformer(cfg)
  decided = convert.torch_to_jax(
      {n: np.full(p.shape, optim.decays(convert.jax_name(n), False), np.float32)
       for n, p in twin.named_parameters()}, cfg)
  jax.tree.map(lambda m, d: np.testing.assert_array_equal(np.full(d.shape, m), d), mask, decided)


# --- ten steps: JAX in-process, the twin through the command line ---------------------------------

# The subprocess runs take their peak from the command line: measuring the CPU's (their cache
# directory is the test's own) would cost each process seconds.
TEN_STEPS = ["--config=configs/mpt.py:nano", "--config.steps=10", "--config.log_every=0",
             "--config.warmup_steps_excluded=2", "--config.peak_tflops=0.2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The JAX run and the twin's run of the same config, seed and data."""
  tmp = tmp_path_factory.mktemp("twin")
  c = make_config("mpt", "nano", steps=10, log_every=0, warmup_steps_excluded=2, peak_tflops=0.2)
  train.run(c, str(tmp / "jax"))
  twin = run_cli(["train", *TEN_STEPS, "--config.framework=torch", "--config.profile_steps=4:5",
                  "--config.tensorboard=True", f"--workdir={tmp / 'torch'}"], tmp,
                 OMP_NUM_THREADS=1)
  assert twin.returncode == 0, twin.stderr
  return tmp, twin


def losses(run_dir):
  with open(os.path.join(run_dir, "metrics.jsonl")) as f:
    return [json.loads(line)["loss"] for line in f]


def test_ten_steps_agree_and_the_run_directory_is_complete(runs):
  tmp, twin = runs
  jax_losses, torch_losses = losses(tmp / "jax"), losses(tmp / "torch")
  assert len(torch_losses) == 10 and jax_losses[-1] < jax_losses[0]
  np.testing.assert_allclose(torch_losses, jax_losses, rtol=1e-4)
  info = read_json(tmp / "torch" / "run.json")
  summary = read_json(tmp / "torch" / "summary.json")
  assert info["framework"] == "torch" and info["config"]["framework"] == "torch"
  assert info["versions"]["torch"] == torch.__version__
  assert info["torch"]["compile"] == "eager" and info["torch"]["parallel"] == "none"
  assert info["attention"]["implementation"] == "sdpa" and info["attention"]["backend"]
  assert info["n_params"] == read_json(tmp / "jax" / "run.json")["n_params"]
  assert info["flops_per_token"] == read_json(tmp / "jax" / "run.json")["flops_per_token"]
  assert summary["status"] == "finished" and summary["timed_steps"] == 6  # 2 warm-up, 2 traced
  assert summary["compile_s"] > 0 and summary["mfu_median"] > 0
  with open(tmp / "torch" / "metrics.jsonl") as f:
    first = json.loads(f.readline())
  assert first["lr"] == 0.0 and first["mfu"] > 0  # Optax's schedule: step 1 runs at lr(0)


def test_profile_steps_traces_the_twin_with_torch_profiler(runs, capsys):
  tmp, _ = runs
  profile = read_json(tmp / "torch" / "run.json")["profile"]
  assert profile["tool"] == "torch.profiler" and profile["steps"] == [4, 5]
  assert sorted(os.path.basename(f) for f in profile["files"]) == ["top_ops.txt", "torch_trace.json"]
  with open(tmp / "torch" / profile["dir"] / "torch_trace.json") as f:
    assert json.load(f)["traceEvents"]
  with open(tmp / "torch" / "metrics.jsonl") as f:
    assert [json.loads(line).get("profiled", False) for line in f] == [s in (4, 5) for s in range(1, 11)]
  from jaxbench import profiling
  assert profiling.main(["jaxbench profile", str(tmp / "torch")]) == 0
  table = capsys.readouterr().out
  assert table.startswith("torch ops of steps 4-5") and "aten::" in table


def test_the_twin_writes_tensorboard_and_starts_an_unfinished_run_again(runs, tmp_path, capsys):
  from conftest import read_events
  tmp, _ = runs
  (events,) = (tmp / "torch").glob("events.out.tfevents.*")
  assert sorted(step for step, tag, _ in read_events(events) if tag == "loss") == list(range(1, 11))
  # The twin keeps no checkpoints: a run stopped part-way starts again from step 0 in its
  # directory, replacing its files; a finished one has nothing to do.
  run_dir = tmp_path / "torch"
  shutil.copytree(tmp / "torch", run_dir)
  summary = read_json(run_dir / "summary.json")
  (run_dir / "summary.json").write_text(json.dumps({**summary, "status": "stopped (SIGTERM)"}))
  with open(run_dir / "metrics.jsonl") as f:
    lines = f.readlines()[:4]
  (run_dir / "metrics.jsonl").write_text("".join(lines))
  c = make_config("mpt", "nano", steps=10, log_every=0, warmup_steps_excluded=2, peak_tflops=0.2,
                  framework="torch", tensorboard=True)
  again = twin_train.run(c, str(run_dir))
  out = capsys.readouterr().out
  assert ("got to step 4 (stopped (SIGTERM)) with no checkpoint to resume from: starting again "
          "from step 0") in out
  assert again["status"] == "finished" and losses(run_dir) == pytest.approx(losses(tmp / "torch"))
  assert read_json(run_dir / "run.json")["restarted"]["earlier_steps"] == 4
  events = [e for path in run_dir.glob("events.out.tfevents.*") for e in read_events(path)]
  assert sorted(step for step, tag, _ in events if tag == "loss") == list(range(1, 11))
  assert twin_train.run(c, str(run_dir)) == read_json(run_dir / "summary.json")
  assert "nothing to do" in capsys.readouterr().out
  # JAX asked to train in the twin's finished run: exit 2, naming the framework.
  assert train.main(["jaxbench train", "--config=configs/mpt.py:nano", "--config.steps=10",
                     f"--workdir={run_dir}"]) == 2
  assert "framework='torch'" in capsys.readouterr().err


def test_the_twin_resumes_from_its_checkpoint_bitwise(tmp_path, capsys):
  c = make_config("mpt", "nano", steps=10, log_every=0, warmup_steps_excluded=2, peak_tflops=0.2,
                  framework="torch", **{"checkpoint.every": 5})
  whole = twin_train.run(c, str(tmp_path / "whole"))
  assert whole["last_checkpoint_step"] == 10
  assert sorted(os.listdir(tmp_path / "whole" / "checkpoints")) == ["10", "5"]
  # What a kill after step 7 leaves: the checkpoint of step 5, metrics up to step 7, no summary.
  run_dir = tmp_path / "killed"
  shutil.copytree(tmp_path / "whole", run_dir)
  shutil.rmtree(run_dir / "checkpoints" / "10")
  (run_dir / "summary.json").unlink()
  with open(run_dir / "metrics.jsonl") as f:
    lines = f.readlines()[:7]
  (run_dir / "metrics.jsonl").write_text("".join(lines))
  (run_dir / "checkpoints" / "7.tmp").mkdir()  # a save killed part-way: never read, removed
  capsys.readouterr()
  summary = twin_train.run(c, str(run_dir))
  assert "resuming from the checkpoint of step 5" in capsys.readouterr().out
  assert sorted(os.listdir(run_dir / "checkpoints")) == ["10", "5"]
  assert losses(run_dir) == losses(tmp_path / "whole")  # bitwise: params and AdamW state restored
  assert summary["resumed_from_step"] == 5 and summary["status"] == "finished"
  assert summary["timed_steps"] == 6  # steps 3-5 before the kill, 8-10 after (2 warm-up each)
  # Neither framework reads the other's checkpoints: exit 2, naming the framework.
  assert train.main(["jaxbench train", "--config=configs/mpt.py:nano", "--config.steps=10",
                     f"--workdir={run_dir}"]) == 2
  assert "framework='torch'" in capsys.readouterr().err


def test_a_restored_optimizer_keeps_this_runs_kernel(tmp_path):
  from jaxbench.twin import checkpoint as twin_checkpoint
  fused = twin_train.build(make_config("mpt", "nano", framework="torch"))
  saver = twin_checkpoint.TwinCheckpointer(str(tmp_path), every=1, keep=1, rank=0, world=1)
  saver.save(1, fused.module, fused.optimizer, {})
  foreach = twin_train.build(make_config("mpt", "nano", framework="torch",
                                         **{"torch.fused_adamw": False}))
  saver.restore(1, foreach.module, foreach.optimizer)
  assert all(g["foreach"] and not g.get("fused") for g in foreach.optimizer.param_groups)


def test_compare_reads_both(runs, capsys):
  tmp, _ = runs
  assert compare.main(["jaxbench compare", str(tmp / "jax"), str(tmp / "torch")]) == 0
  out = capsys.readouterr().out
  # Two runs on a shared CPU: told apart or not, with the interval (compare's intervals).
  assert ("torch delivers" in out or "torch and jax are not distinguishable" in out)
  assert "framework" in out and "matching" in out


@pytest.mark.parametrize("flag,key", [("--config.torch.parallel=pipeline", "torch.parallel")])
def test_bad_torch_config_exits_2_naming_the_key(tmp_path, capsys, flag, key):
  code = train.main(["jaxbench train", "--config=configs/mpt.py:nano", "--config.framework=torch",
                     flag, f"--workdir={tmp_path / 'run'}"])
  err = capsys.readouterr().err
  assert code == 2 and key in err and "allowed" in err, err
  assert not os.path.exists(tmp_path / "run")


def test_missing_torch_exits_2_naming_the_extra(tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
  c = make_config("mpt", "nano", framework="torch")
  assert twin_train.main(c, str(tmp_path / "run")) == 2
  err = capsys.readouterr().err
  assert "framework" in err and "`torch` extra" in err and len(err.strip().splitlines()) == 1


def test_fsdp_under_torchrun_trains_the_same_curve(runs, tmp_path):
  tmp, _ = runs
  result = subprocess.run(
      [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
       "-m", "jaxbench", "train", *TEN_STEPS, "--config.framework=torch", "--config.mesh.fsdp=2",
       "--config.mesh.data=1", f"--workdir={tmp_path / 'fsdp'}", "--config.peak_tflops=0",
       "--config.checkpoint.every=5"],
      cwd=str(tmp_path), env=cli_env(tmp_path, OMP_NUM_THREADS=1), capture_output=True, text=True,
      timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  info = read_json(tmp_path / "fsdp" / "run.json")
  assert info["torch"]["parallel"] == "fsdp" and info["n_devices"] == 2
  # Two ranks share this CPU: no peak of one process's measurement, none cached (peak.resolve_peak).
  assert info["peak"]["source"] == "unknown" and "2 processes" in info["peak"]["detail"]
  assert not (tmp_path / "cache" / "peaks.json").exists()
  np.testing.assert_allclose(losses(tmp_path / "fsdp"), losses(tmp / "torch"), rtol=1e-4)
  # Its sharded checkpoint of step 5 resumes in one process (DCP reshards), on the same curve.
  shutil.copytree(tmp_path / "fsdp", tmp_path / "one")
  shutil.rmtree(tmp_path / "one" / "checkpoints" / "10")
  (tmp_path / "one" / "summary.json").unlink()  # as a kill before the end leaves it
  one = run_cli(["train", *TEN_STEPS, "--config.framework=torch", "--config.checkpoint.every=5",
                 f"--workdir={tmp_path / 'one'}"], tmp_path, OMP_NUM_THREADS=1)
  assert one.returncode == 0, one.stderr[-3000:]
  assert "resuming from the checkpoint of step 5" in one.stdout
  np.testing.assert_allclose(losses(tmp_path / "one"), losses(tmp / "torch"), rtol=1e-4)
  assert "n_devices 2 -> 1" in read_json(tmp_path / "one" / "summary.json")["timing_note"]
  # And under DDP over the two processes.
  shutil.copytree(tmp_path / "fsdp", tmp_path / "ddp")
  shutil.rmtree(tmp_path / "ddp" / "checkpoints" / "10")
  (tmp_path / "ddp" / "summary.json").unlink()
  ddp = subprocess.run(
      [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
       "-m", "jaxbench", "train", *TEN_STEPS, "--config.framework=torch", "--config.mesh.data=2",
       f"--workdir={tmp_path / 'ddp'}", "--config.peak_tflops=0", "--config.checkpoint.every=5"],
      cwd=str(tmp_path), env=cli_env(tmp_path, OMP_NUM_THREADS=1), capture_output=True, text=True,
      timeout=600)
  assert ddp.returncode == 0, ddp.stderr[-3000:]
  assert "resuming from the checkpoint of step 5" in ddp.stdout
  assert read_json(tmp_path / "ddp" / "run.json")["torch"]["parallel"] == "ddp"
  np.testing.assert_allclose(losses(tmp_path / "ddp"), losses(tmp / "torch"), rtol=1e-4)
  assert sorted(os.listdir(tmp_path / "ddp" / "checkpoints")) == ["10", "5"]
