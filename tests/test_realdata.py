"""Training from `jaxbench prepare` output: the data path end to end, evaluation, resume."""

import json
import random
import shutil

import pytest
from conftest import read_json, run_cli

from jaxbench import rundir

TRAIN = ["train", "--config=configs/mpt.py:nano", "--config.model.vocab_size=257",
         "--config.peak_tflops=1", "--config.log_every=1"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("data")
  rng = random.Random(0)
  words = "the quick brown fox jumps over a lazy dog while seven wizards hex jolly mages".split()
  (tmp / "corpus" / "sub").mkdir(parents=True)
  for i in range(12):
    folder = tmp / "corpus" / ("sub" if i % 2 else "")
    (folder / f"doc{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(2000)))
  proc = run_cli(["prepare", f"--input={tmp / 'corpus'}", f"--output={tmp / 'tokens'}"], tmp)
  assert proc.returncode == 0, proc.stderr
  return tmp / "tokens"


def test_train_from_prepared_text_with_eval(tmp_path, dataset):
  proc = run_cli([*TRAIN, f"--config.data.path={dataset}", "--config.steps=40",
                  "--config.eval.every=20", "--workdir=run"], tmp_path)
  assert proc.returncode == 0, proc.stderr[-3000:]
  info = read_json(tmp_path / "run" / "run.json")
  assert info["data"]["path"] == str(dataset) and info["data"]["vocab_size"] == 257
  records = rundir.read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
  assert [r["step"] for r in records if "eval_loss" in r] == [20, 40]
  assert all("data_wait_s" in r for r in records)
  assert records[-1]["loss"] < records[0]["loss"] - 2.0  # English-like text is learnable
  assert records[-1]["eval_loss"] < records[19]["eval_loss"]


def test_resume_from_real_data_is_bitwise_equal(tmp_path, dataset):
  args = [f"--config.data.path={dataset}", "--config.steps=12", "--config.checkpoint.every=6",
          "--config.eval.every=6"]
  straight = run_cli([*TRAIN, *args, "--workdir=straight"], tmp_path)
  assert straight.returncode == 0, straight.stderr[-3000:]
  shutil.copytree(tmp_path / "straight", tmp_path / "resumed")
  shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "12")
  again = run_cli([*TRAIN, *args, "--workdir=resumed"], tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  a = rundir.read_metrics(str(tmp_path / "straight" / "metrics.jsonl"))
  b = rundir.read_metrics(str(tmp_path / "resumed" / "metrics.jsonl"))
  assert [r["step"] for r in b] == list(range(1, 13))
  assert [(r["loss"], r.get("eval_loss")) for r in a] == [(r["loss"], r.get("eval_loss")) for r in b]


def _broken(tmp_path, dataset, how):
  broken = tmp_path / "broken"
  shutil.copytree(dataset, broken)
  if how == "no_meta":
    (broken / "meta.json").unlink()
  elif how == "truncated":
    data = (broken / "train.bin").read_bytes()
    (broken / "train.bin").write_bytes(data[: len(data) // 2])
  elif how == "tiny":
    meta = json.loads((broken / "meta.json").read_text())
    meta["train_tokens"] = 10
    (broken / "train.bin").write_bytes((broken / "train.bin").read_bytes()[:20])
    (broken / "meta.json").write_text(json.dumps(meta))
  return broken


@pytest.mark.parametrize("how,extra,needle", [
    ("no_meta", [], "data.path"),
    ("truncated", [], "data.path"),
    ("tiny", [], "data.path"),
    ("ok", ["--config.model.vocab_size=200"], "model.vocab_size"),
])
def test_bad_data_exits_2(tmp_path, dataset, how, extra, needle):
  path = dataset if how == "ok" else _broken(tmp_path, dataset, how)
  proc = run_cli([*TRAIN, f"--config.data.path={path}", *extra, "--workdir=run"], tmp_path)
  assert proc.returncode == 2, proc.stderr[-2000:]
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and needle in lines[0]
  assert not (tmp_path / "run").exists()
