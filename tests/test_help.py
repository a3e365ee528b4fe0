"""What a newcomer reads first: `jaxbench train --help` lists every config key (from config.py's
own comments, so it cannot drift), `jaxbench help keys` searches them, bare `jaxbench` is usage
and exit 2, and data.path brings its vocabulary."""

import subprocess
import sys

from conftest import cli_env

from jaxbench import cli
from jaxbench import config as config_lib
from jaxbench import data as data_lib
from jaxbench import train


def flat_keys(d, prefix=""):
  for k, v in d.items():
    if isinstance(v, dict):
      yield from flat_keys(v, f"{prefix}{k}.")
    else:
      yield f"{prefix}{k}"


def test_every_key_is_documented_with_its_default():
  docs = {d["key"]: d for d in config_lib.key_docs()}
  assert set(docs) == set(flat_keys(config_lib.base_config().to_dict()))
  for key, d in docs.items():
    assert len(d["meaning"]) > 10, key  # a comment above its line in base_config()
  assert docs["model.remat"]["allowed"] == config_lib.REMAT_POLICIES
  assert docs["preset"]["meaning"] == docs["family"]["meaning"]  # one comment, two lines
  text = train.help_text()
  for key, d in docs.items():
    assert f"--config.{key}={d['default']!r}" in text, key
  for flag in ("--workdir", "--coordinator_address", "--num_processes"):
    assert flag in text
  # The groups a reader looks for, each once.
  for group in ("run:", "batch:", "model:", "optimizer:", "data:", "checkpoint:", "mesh:"):
    assert text.count(f"\n{group}\n") == 1, group


def test_first_sentences_are_not_cut_inside_a_range_or_an_abbreviation():
  assert config_lib.first_sentence("Ids 0 .. n - 1 (rows). More.") == "Ids 0 .. n - 1 (rows)"
  assert config_lib.first_sentence("Steps, e.g. 5:7, traced. More.") == "Steps, e.g. 5:7, traced"


def test_help_keys_and_bare_jaxbench(capsys):
  assert cli.main(["jaxbench", "help", "keys", "remat"]) == 0
  out = capsys.readouterr().out
  assert "--config.model.remat='none'  [none | full | dots | dots_no_batch]" in out
  assert "Rematerialization" in out and "--config.steps" not in out
  assert cli.main(["jaxbench", "help", "keys", "impl"]) == 0
  assert "--config.model.impl='tuned'  [tuned | reference]" in capsys.readouterr().out
  assert cli.main(["jaxbench", "help", "keys", "no-such-key"]) == 2
  assert cli.main(["jaxbench"]) == 2
  assert "usage: jaxbench <command>" in capsys.readouterr().err


def test_train_help_from_the_command_line(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "jaxbench", "train", "-h"], cwd=tmp_path,
                        env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0 and "--config.checkpoint.every=0" in proc.stdout
  assert len(proc.stdout.splitlines()) > 100


def test_data_path_brings_its_vocabulary(tmp_path, capsys):
  from jaxbench import prepare
  (tmp_path / "a.txt").write_text("some text to train on\n" * 50)
  assert prepare.main(["jaxbench prepare", f"--input={tmp_path / 'a.txt'}",
                       f"--output={tmp_path / 'data'}"]) == 0
  data = f"--config.data.path={tmp_path / 'data'}"
  c, _ = config_lib.parse_flags(["jaxbench train", "--config=configs/mpt.py:nano", data])
  assert c.model.vocab_size == 257  # the bytes tokenizer's, not the preset's 256
  given, _ = config_lib.parse_flags(["jaxbench train", "--config=configs/mpt.py:nano", data,
                                     "--config.model.vocab_size=300"])
  assert given.model.vocab_size == 300
  note = data_lib.vocab_note(given, data_lib.make(given, "train"))
  assert note and "43 embedding rows no token uses" in note
  assert data_lib.vocab_note(c, data_lib.make(c, "train")) is None
