"""`jaxbench export-hf`: transformers builds the exported model from the files alone (nothing
downloaded) and its logits equal jaxbench's; configs it cannot represent exit 2."""

import json
import os

import jax
import numpy as np
import pytest
from conftest import NO_TORCH

from jaxbench import config, export_hf, model, program, rundir

pytest.importorskip("safetensors", reason=NO_TORCH)
transformers = pytest.importorskip("transformers", reason=NO_TORCH)
torch = pytest.importorskip("torch", reason=NO_TORCH)
torch.set_num_threads(1)  # the test machine is shared (see test_twin.py)


def checkpointed_run(tmp_path, family, **model_overrides):
  """A run directory holding run.json and an Orbax checkpoint (step 2) of the initial state,
  written by the training run's own Checkpointer (training it first would only add compile time)."""
  from jaxbench import checkpoint
  c = config.load_config_file(f"configs/{family}.py:nano")
  for key, value in model_overrides.items():
    c.model[key] = value
  workdir = str(tmp_path / family)
  setup = program.build(c)
  rundir.RunDir(workdir).write("run.json", {"config": c.to_dict()})
  saver = checkpoint.Checkpointer(workdir, every=1, keep=1, async_save=False)
  saver.save(2, program.init_state(setup), c.to_dict())
  saver.close()
  return workdir


@pytest.mark.parametrize("family,overrides", [("llama", {"bias": True}), ("mpt", {})],
                         ids=["llama-gqa-bias", "mpt"])
def test_transformers_logits_equal_jaxbench(tmp_path, capsys, family, overrides):
  workdir = checkpointed_run(tmp_path, family, **overrides)
  out = str(tmp_path / "hf")
  assert export_hf.main(["jaxbench export-hf", f"--workdir={workdir}", f"--out={out}"]) == 0
  assert "wrote" in capsys.readouterr().out
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors"]
  with open(os.path.join(out, "config.json")) as f:
    hf_config = json.load(f)
  assert "auto_map" not in hf_config  # no custom code
  if family == "mpt":
    assert hf_config["activation_function"] == "gelu"  # exact GELU, not GPT-2's tanh default

  _, cfg, params, step = export_hf.load_params(workdir)
  assert step == 2
  tokens = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 48)).astype(np.int32)
  with jax.default_matmul_precision("highest"):
    expected = np.asarray(jax.jit(model.Transformer(cfg).apply)({"params": params}, tokens))
  hf = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
  expected_class = {"llama": "LlamaForCausalLM", "mpt": "GPT2LMHeadModel"}[family]
  assert type(hf).__name__ == expected_class
  with torch.no_grad():
    got = hf(torch.from_numpy(tokens).long()).logits.float().numpy()
  assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-4


def test_a_twin_checkpoint_exports_too(tmp_path, capsys):
  from jaxbench.twin import checkpoint as twin_checkpoint
  from jaxbench.twin import train as twin_train
  c = config.load_with_overrides("configs/llama.py:nano", {"framework": "torch"})
  s = twin_train.build(c)
  workdir = str(tmp_path / "twin")
  rundir.RunDir(workdir).write("run.json", {"config": c.to_dict()})
  twin_checkpoint.TwinCheckpointer(workdir, every=1, keep=1, rank=0, world=1).save(
      3, s.module, s.optimizer, c.to_dict())
  out = str(tmp_path / "hf")
  assert export_hf.main(["jaxbench export-hf", f"--workdir={workdir}", f"--out={out}"]) == 0
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["jaxbench"]["checkpoint_step"] == 3
  tokens = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 48))).long()
  hf = transformers.AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
  with torch.no_grad():
    expected, got = s.module(tokens).float(), hf(tokens).logits.float()
  assert (got - expected).abs().max() / expected.abs().max() < 1e-4


def fake_run(tmp_path, family, **model_overrides):
  """A run directory with only its run.json: enough for what export-hf checks first."""
  c = config.load_config_file(f"configs/{family}.py:nano")
  for key, value in model_overrides.items():
    c.model[key] = value
  workdir = tmp_path / "run"
  workdir.mkdir()
  rundir.write_json(str(workdir / "run.json"), {"config": c.to_dict()})
  return str(workdir)


@pytest.mark.parametrize("family,overrides,words", [
    ("mpt", {"position": "alibi"}, "alibi"),
    ("mpt", {"tie_embeddings": False}, "untied"),
    ("mpt", {"n_kv_heads": 2}, "grouped-query"),
    ("mpt", {}, "no checkpoint"),
])
def test_unrepresentable_or_missing_checkpoint_exits_2(tmp_path, capsys, family, overrides, words):
  workdir = fake_run(tmp_path, family, **overrides)
  code = export_hf.main(["jaxbench export-hf", f"--workdir={workdir}", f"--out={tmp_path / 'hf'}"])
  err = capsys.readouterr().err
  assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
  assert not os.path.exists(tmp_path / "hf")
