"""Tests for `jaxbench prepare` (jaxbench.prepare) and the batches read back (jaxbench.tokenfile)."""

import hashlib
import io
import json
import math
import os
import subprocess
import sys
import time

import ml_collections
import numpy as np
import pytest

from conftest import cli_env, read_json, run_cli
from jaxbench import cli, prepare
from jaxbench.errors import ConfigError
from jaxbench.tokenfile import TokenFileData

# Text with 2-, 3- and 4-byte UTF-8 characters, so small chunks cut characters in half.
MULTIBYTE = "naïve café — 日本語のテキスト 𝄞 🙂 ∑x² ø\n"


def _make_corpus(root) -> dict:
  """Text files in nested folders plus a binary, an empty and a late-non-UTF-8 file.

  Returns {relative path: bytes} of the files that must become documents.
  """
  texts = {
      "a.txt": b"first document\nwith two lines\n",
      "sub/b.md": ("# heading\n" + MULTIBYTE * 3).encode(),
      "sub/deeper/c.txt": b"no trailing newline",
      "sub/deeper/d.txt": "crlf\r\nline\r\n".encode(),
  }
  for rel, data in texts.items():
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(data)
  (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR" + bytes(range(256)))
  (root / "sub" / "empty.txt").write_bytes(b"")
  # Latin-1 after 9 KiB of ASCII: passes the 8 KiB sniff, found part-way while streaming.
  (root / "sub" / "late_latin1.txt").write_bytes(b"ascii line\n" * 900 + "caf\xe9\n".encode("latin-1"))
  return texts


def _prepare_cli(args, tmp_path):
  """`jaxbench prepare ARGS` in a fresh process.

  Goes through `python -m jaxbench prepare` once cli.py lists the command; until then (the lead
  wires it) through `python -m jaxbench.prepare`, the module's own entry point.
  """
  if "prepare" in cli.COMMANDS:
    return run_cli(["prepare", *args], tmp_path)
  return subprocess.run([sys.executable, "-m", "jaxbench.prepare", *args], cwd=str(tmp_path),
                        env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)


def _run(*args) -> int:
  """In-process `jaxbench prepare ARGS` (fast); output through capsys."""
  return prepare.main(["jaxbench prepare", *args])


def _tokens(folder, split, dtype="<u2") -> np.ndarray:
  return np.fromfile(os.path.join(folder, f"{split}.bin"), dtype=dtype)


def _split_documents(ids: np.ndarray, eod: int) -> list[np.ndarray]:
  """A token stream cut at its end-of-document tokens (each document ends with one)."""
  ends = np.flatnonzero(ids == eod)
  assert len(ids) == 0 or ends[-1] == len(ids) - 1
  return np.split(ids, ends + 1)[:-1] if len(ends) else []


def _byte_documents(ids: np.ndarray) -> list[bytes]:
  """The documents of a byte-tokenizer stream, EOD separators dropped."""
  return [bytes(d[:-1].astype(np.uint8)) for d in _split_documents(ids, 256)]


def _sha256(path) -> str:
  return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _config(**kw) -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict({"seed": 0, "batch_size": 8, "microbatches": 2, "seq_len": 16,
                                 "model": {"vocab_size": 257}})
  for key, value in kw.items():
    if key == "vocab_size":
      c.model.vocab_size = value
    else:
      c[key] = value
  return c


# --- prepare with the byte tokenizer ---------------------------------------------------------------
def test_bytes_corpus_end_to_end(tmp_path):
  corpus = tmp_path / "corpus"
  texts = _make_corpus(corpus)
  out = tmp_path / "out"
  result = _prepare_cli([f"--input={corpus}", f"--output={out}", "--val_fraction=0.25"], tmp_path)
  assert result.returncode == 0, result.stderr
  assert len(result.stdout.strip().splitlines()) == 1, result.stdout
  assert "4 documents" in result.stdout and "skipped 2 binary, 1 empty" in result.stdout
  assert "Traceback" not in result.stderr

  meta = read_json(out / "meta.json")
  assert meta["format"] == "jaxbench-tokens-v1"
  assert meta["tokenizer"] == "bytes"
  assert (meta["vocab_size"], meta["dtype"], meta["eod_token"]) == (257, "uint16", 256)
  assert meta["sources"] == [str(corpus / rel) for rel in sorted(texts)]  # sorted, recursive
  assert meta["skipped"]["binary"] == 2 and meta["skipped"]["empty"] == 1
  skipped = {os.path.basename(s["path"]): s["kind"] for s in meta["skipped"]["files"]}
  assert skipped == {"image.png": "binary", "empty.txt": "empty", "late_latin1.txt": "binary"}
  assert sorted(os.listdir(out)) == ["meta.json", "train.bin", "val.bin"]  # no partial files left

  train, val = _tokens(out, "train"), _tokens(out, "val")
  assert (len(train), len(val)) == (meta["train_tokens"], meta["val_tokens"])
  # Every document is its bytes followed by EOD: tokens = file lengths + one per document.
  assert len(train) + len(val) == sum(len(b) + 1 for b in texts.values())
  for split in ("train", "val"):
    assert meta["sha256"][f"{split}.bin"] == _sha256(out / f"{split}.bin")
    assert os.path.getsize(out / f"{split}.bin") == 2 * meta[f"{split}_tokens"]

  # Split by documents: val holds exactly the listed val sources, in order; nothing is lost.
  split = meta["split"]
  assert split["by"] == "documents" and split["val_documents"] == 1 and split["train_documents"] == 3
  val_rels = [os.path.relpath(p, corpus) for p in split["val_sources"]]
  assert _byte_documents(val) == [texts[rel] for rel in val_rels]
  assert _byte_documents(train) == [texts[rel] for rel in sorted(texts) if rel not in val_rels]


def test_split_is_deterministic_and_follows_the_seed(tmp_path, capsys):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  for i in range(20):
    (corpus / f"doc{i:02d}.txt").write_text(f"document number {i}\n" * (i + 1))

  def run(name, seed, fraction="0.2"):
    assert _run(f"--input={corpus}", f"--output={tmp_path / name}", f"--seed={seed}",
                f"--val_fraction={fraction}") == 0
    return read_json(tmp_path / name / "meta.json")

  first, again = run("s0", 0), run("s0_again", 0)
  assert first["split"]["val_sources"] == again["split"]["val_sources"]
  for split in ("train.bin", "val.bin"):
    assert first["sha256"][split] == again["sha256"][split]
  assert first["split"]["val_documents"] == 4  # round(0.2 * 20)
  others = [set(run(f"s{seed}", seed)["split"]["val_sources"]) for seed in (1, 2)]
  assert any(o != set(first["split"]["val_sources"]) for o in others)
  assert run("half", 0, "0.5")["split"]["val_documents"] == 10
  assert run("tiny", 0, "0.001")["split"]["val_documents"] == 1  # at least one


def test_single_document_is_split_by_tokens(tmp_path, capsys):
  doc = tmp_path / "only.txt"
  doc.write_bytes(b"0123456789" * 100)
  assert _run(f"--input={doc}", f"--output={tmp_path / 'out'}", "--val_fraction=0.1") == 0
  meta = read_json(tmp_path / "out" / "meta.json")
  total = 1000 + 1  # bytes + EOD
  cut = math.floor(0.9 * total)
  assert meta["split"]["by"] == "tokens" and meta["split"]["cut_token"] == cut
  assert (meta["train_tokens"], meta["val_tokens"]) == (cut, total - cut)
  stream = np.concatenate([_tokens(tmp_path / "out", "train"), _tokens(tmp_path / "out", "val")])
  assert bytes(stream[:-1].astype(np.uint8)) == doc.read_bytes() and stream[-1] == 256


def test_inputs_list_files_and_folders_once(tmp_path, capsys):
  (tmp_path / "dir").mkdir()
  (tmp_path / "dir" / "x.txt").write_text("x\n")
  (tmp_path / "y.txt").write_text("y\n")
  # A file named twice and a folder that contains an already listed file: each document once.
  args = [f"--input={tmp_path / 'y.txt'},{tmp_path / 'dir'}", f"--input={tmp_path / 'dir' / 'x.txt'}"]
  assert _run(*args, f"--output={tmp_path / 'out'}") == 0
  meta = read_json(tmp_path / "out" / "meta.json")
  assert meta["sources"] == [str(tmp_path / "y.txt"), str(tmp_path / "dir" / "x.txt")]


def test_output_folder_inside_the_corpus_is_not_read(tmp_path, capsys):
  (tmp_path / "a.txt").write_text("a\n")
  (tmp_path / "b.txt").write_text("b\n")
  (tmp_path / "tokens").mkdir()
  (tmp_path / "tokens" / "notes.txt").write_text("an existing output folder may hold other files\n")
  assert _run(f"--input={tmp_path}", f"--output={tmp_path / 'tokens'}") == 0
  sources = read_json(tmp_path / "tokens" / "meta.json")["sources"]
  assert sources == [str(tmp_path / "a.txt"), str(tmp_path / "b.txt")]


def test_planned_val_document_that_turns_out_binary(tmp_path, capsys):
  """A val pick found non-UTF-8 part-way leaves val empty: the last train document moves over."""
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  names = ["a.txt", "b.txt", "c.txt"]
  seed = next(s for s in range(100) if prepare.val_documents(names, 0.01, s) == {1})
  for name in names:
    (corpus / name).write_bytes(name.encode() * 5)
  (corpus / "b.txt").write_bytes(b"ok\n" * 4000 + b"\xff")
  assert _run(f"--input={corpus}", f"--output={tmp_path / 'out'}", f"--seed={seed}",
              "--chunk_bytes=1000") == 0
  meta = read_json(tmp_path / "out" / "meta.json")
  assert meta["skipped"]["binary"] == 1
  assert meta["split"]["val_sources"] == [str(corpus / "c.txt")] and "adjusted" in meta["split"]
  assert bytes(_tokens(tmp_path / "out", "val")[:-1].astype(np.uint8)) == b"c.txt" * 5
  assert bytes(_tokens(tmp_path / "out", "train")[:-1].astype(np.uint8)) == b"a.txt" * 5


# --- streaming ---------------------------------------------------------------------------------------
def test_small_chunks_give_the_same_tokens(tmp_path, capsys):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  big = (MULTIBYTE * 400).encode()  # ~24 KB: thousands of 7-byte chunks, characters cut in half
  (corpus / "big.txt").write_bytes(big)
  (corpus / "small.txt").write_text("small\n")
  assert len(big) > 7 * 1000
  for name, chunk in (("whole", prepare.CHUNK_BYTES), ("chunked", 7)):
    assert _run(f"--input={corpus}", f"--output={tmp_path / name}", f"--chunk_bytes={chunk}") == 0
  for split in ("train", "val"):
    assert np.array_equal(_tokens(tmp_path / "whole", split), _tokens(tmp_path / "chunked", split))
  stream = np.concatenate([_tokens(tmp_path / "chunked", s) for s in ("train", "val")])
  assert sorted(_byte_documents(stream)) == sorted([big, b"small\n"])


def test_read_text_keeps_characters_cut_by_chunks(tmp_path):
  path = tmp_path / "t.txt"
  path.write_text(MULTIBYTE * 3)
  for chunk in (1, 2, 3, 5):
    pieces = list(prepare.read_text(str(path), chunk, lambda n: None))
    assert b"".join(raw for raw, _ in pieces) == path.read_bytes()
    assert "".join(text for _, text in pieces) == MULTIBYTE * 3


def test_line_blocks_end_before_a_line_start():
  text = "one\n  indented\n\nthree\nfour\nfive six\n"
  chunks = [text[i:i + 3] for i in range(0, len(text), 3)]
  blocks = list(prepare.line_blocks(chunks, block_chars=4))
  assert "".join(blocks) == text and len(blocks) == 4
  for block in blocks[:-1]:  # every cut: after a newline, before a non-space character
    assert block.endswith("\n") and len(block) > 4
  assert all(not b[0].isspace() for b in blocks[1:])
  assert list(prepare.line_blocks(chunks, block_chars=len(text))) == [text]  # short: one block
  long_line = ["word " * 10] * 10  # no newline at all: cut before a space past 4 blocks
  blocks = list(prepare.line_blocks(long_line, block_chars=20))
  assert "".join(blocks) == "".join(long_line) and len(blocks) > 1
  assert all(b.startswith(" ") and len(b) <= 20 for b in blocks[1:-1])


def test_line_blocks_ask_clean_whether_a_cut_is_clean():
  text = "".join(f"line {i}\n" + ("\n" if i % 2 else "") for i in range(40))
  asked = []

  def clean(t, cut):  # cuts after a blank line refused, and judged with 8 characters after them
    asked.append(cut)
    assert cut + 8 <= len(t)
    return not t[:cut].endswith("\n\n")

  chunks = [text[i:i + 5] for i in range(0, len(text), 5)]
  blocks = list(prepare.line_blocks(chunks, 30, clean, context=8))
  assert "".join(blocks) == text and len(blocks) > 3 and asked
  assert all(not b.endswith("\n\n") for b in blocks[:-1])
  # Past max_checks refusals in a block, the next line start is taken.
  blocks = list(prepare.line_blocks([text], 30, lambda t, cut: False, context=8, max_checks=2))
  assert "".join(blocks) == text and all(len(b) < 60 for b in blocks)


# --- tokenizer.json --------------------------------------------------------------------------------
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _train_bpe(path, texts, eos="<|endoftext|>", style="gpt2"):
  """A tiny byte-level BPE (GPT-2 or Llama-3 style pre-tokenizer), trained here, offline."""
  tokenizers = pytest.importorskip("tokenizers")
  from tokenizers import decoders, models, pre_tokenizers, trainers
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  if style == "llama3":
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[eos] if eos else [],
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer=trainer)
  tok.save(str(path))
  return tok


def test_tokenizer_json_round_trip(tmp_path, monkeypatch, capsys):
  corpus = tmp_path / "corpus"
  texts = {rel: b.decode() for rel, b in _make_corpus(corpus).items()}
  # A literal end-of-text marker inside a document stays text: only our separators are EOD.
  texts["sub/marker.txt"] = "before <|endoftext|> after\n"
  texts["long.txt"] = "a longer document,\n  indented\n\n\nwith  spaces " + MULTIBYTE * 20
  for rel in ("sub/marker.txt", "long.txt"):
    (corpus / rel).write_text(texts[rel])
  tok = _train_bpe(tmp_path / "tokenizer.json", list(texts.values()))
  eod = tok.token_to_id("<|endoftext|>")
  assert _run(f"--input={corpus}", f"--output={tmp_path / 'out'}",
              f"--tokenizer={tmp_path / 'tokenizer.json'}", "--val_fraction=0.2") == 0
  meta = read_json(tmp_path / "out" / "meta.json")
  assert meta["tokenizer"] == {"path": str(tmp_path / "tokenizer.json"),
                               "sha256": _sha256(tmp_path / "tokenizer.json")}
  assert meta["eod_token"] == eod and meta["dtype"] == "uint16"
  assert meta["vocab_size"] == tok.get_vocab_size(with_added_tokens=True)

  decoded = {}
  for split in ("train", "val"):
    ids = _tokens(tmp_path / "out", split)
    assert len(ids) == meta[f"{split}_tokens"] and ids.max() < meta["vocab_size"]
    docs = _split_documents(ids, eod)
    sources = ([s for s in meta["sources"] if s not in meta["split"]["val_sources"]]
               if split == "train" else meta["split"]["val_sources"])
    assert len(docs) == len(sources)
    for source, doc in zip(sources, docs):
      decoded[os.path.relpath(source, corpus)] = tok.decode(doc[:-1].tolist(), skip_special_tokens=False)
  assert decoded == texts

  # A folder holding tokenizer.json works too. Tiny chunks and blocks give the same ids: blocks end
  # at line starts, pre-token boundaries of byte-level BPE.
  monkeypatch.setattr(prepare, "BLOCK_CHARS", 24)
  assert _run(f"--input={corpus}", f"--output={tmp_path / 'chunked'}", f"--tokenizer={tmp_path}",
              "--val_fraction=0.2", "--chunk_bytes=16") == 0
  for split in ("train", "val"):
    assert np.array_equal(_tokens(tmp_path / "out", split), _tokens(tmp_path / "chunked", split))


@pytest.mark.parametrize("style,kind", [("gpt2", "code"), ("llama3", "code"),
                                        ("gpt2", "paragraphs"), ("llama3", "paragraphs")])
def test_long_documents_in_blocks_give_the_ids_of_the_whole(tmp_path, monkeypatch, capsys, style,
                                                            kind):
  # Blank lines, trailing and leading spaces at every kind of line end ("code"), or one-line
  # paragraphs between blank lines, where every line start follows "\n\n" ("paragraphs"): with
  # blocks of 300 characters, block ends fall after "\n\n", where GPT-2's pre-tokenizer splits
  # differently at a block's end than within the document.
  rng = np.random.default_rng(0)
  words = ["alpha", "beta", "  gamma", "\tdelta", "x=1", "def f():", "return 42", "über"]
  if kind == "code":
    lines = [" ".join(rng.choice(words, rng.integers(0, 7))) + rng.choice(["", " ", "  "])
             + "\n" * int(rng.choice([1, 2, 3])) for _ in range(600)]
  else:
    # short ones: more refused line starts in a block than line_blocks checks
    lines = [" ".join(rng.choice(words[:2] + words[4:], 2)) + "\n\n" for _ in range(800)]
  text = "".join(lines)
  (tmp_path / "corpus").mkdir()
  for name in ("a.txt", "b.txt"):  # one goes to train, the other to val
    (tmp_path / "corpus" / name).write_text(text)
  # Trained on the lines apart, so that "\n\n" at an input's end is in its vocabulary.
  tok = _train_bpe(tmp_path / "tokenizer.json", lines, style=style)
  assert tok.token_to_id("ĊĊ") is not None
  monkeypatch.setattr(prepare, "BLOCK_CHARS", 300)
  # Few checks, as with 64 in blocks of 64Ki characters: a refused place is not saved by the cut
  # before a space that blocks 4 times too long fall back to.
  monkeypatch.setattr(prepare, "MAX_CUT_CHECKS", 8)
  assert _run(f"--input={tmp_path / 'corpus'}", f"--output={tmp_path / 'out'}",
              f"--tokenizer={tmp_path / 'tokenizer.json'}", "--val_fraction=0.5",
              "--chunk_bytes=64") == 0
  ids = _tokens(tmp_path / "out", "train")
  assert ids[:-1].tolist() == tok.encode(text, add_special_tokens=False).ids
  if style == "gpt2":  # the case this guards: cut at the first line start, the ids differ
    first = list(prepare.line_blocks([text], 300))
    assert sum((tok.encode(b, add_special_tokens=False).ids for b in first), []) != ids[:-1].tolist()


def test_tokenizer_without_eos_has_no_separators(tmp_path, capsys):
  (tmp_path / "a.txt").write_text("some text here\n")
  (tmp_path / "b.txt").write_text("more text there\n")
  _train_bpe(tmp_path / "tok.json", ["some text here\n", "more text there\n"], eos=None)
  assert _run(f"--input={tmp_path / 'a.txt'},{tmp_path / 'b.txt'}", f"--output={tmp_path / 'out'}",
              f"--tokenizer={tmp_path / 'tok.json'}") == 0
  meta = read_json(tmp_path / "out" / "meta.json")
  assert meta["eod_token"] is None and meta["split"]["val_documents"] == 1


def test_tokenizer_library_missing_names_the_extra(tmp_path, monkeypatch, capsys):
  (tmp_path / "a.txt").write_text("a\n")
  (tmp_path / "tokenizer.json").write_text("{}")
  monkeypatch.setitem(sys.modules, "tokenizers", None)  # `import tokenizers` raises ImportError
  assert _run(f"--input={tmp_path / 'a.txt'}", f"--output={tmp_path / 'out'}",
              f"--tokenizer={tmp_path / 'tokenizer.json'}") == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "jaxbench[data]" in err[0]


# --- bad input: exit 2, one line ---------------------------------------------------------------------
def _bad_cases(tmp_path):
  (tmp_path / "text.txt").write_text("fine\n")
  (tmp_path / "junk").mkdir()
  (tmp_path / "junk" / "x.bin").write_bytes(b"\0\1\2")
  (tmp_path / "junk" / "e.txt").write_bytes(b"")
  (tmp_path / "done").mkdir()
  (tmp_path / "done" / "meta.json").write_text("{}")
  (tmp_path / "not_json.json").write_text("this is not json")
  (tmp_path / "a_file").write_text("")
  text, out = f"--input={tmp_path / 'text.txt'}", f"--output={tmp_path / 'out'}"
  return {
      "missing input": ([f"--input={tmp_path / 'nope'}", out], "no such file"),
      "no usable text": ([f"--input={tmp_path / 'junk'}", out], "no usable text"),
      "output holds a dataset": ([text, f"--output={tmp_path / 'done'}"], "refusing to overwrite"),
      "output is a file": ([text, f"--output={tmp_path / 'a_file'}"], "not a folder"),
      "tokenizer missing": ([text, out, f"--tokenizer={tmp_path / 'nope.json'}"], "--tokenizer"),
      "tokenizer not json": ([text, out, f"--tokenizer={tmp_path / 'not_json.json'}"], "--tokenizer"),
      "val_fraction 0": ([text, out, "--val_fraction=0"], "--val_fraction"),
      "val_fraction 0.6": ([text, out, "--val_fraction=0.6"], "--val_fraction"),
      "val_fraction nan": ([text, out, "--val_fraction=nan"], "--val_fraction"),
      "val_fraction text": ([text, out, "--val_fraction=half"], "--val_fraction"),
      "no output": ([text], "--output"),
      "unknown flag": ([text, out, "--colour=red"], "--colour"),
  }


BAD_CASES = ["missing input", "no usable text", "output holds a dataset", "output is a file",
             "tokenizer missing", "tokenizer not json", "val_fraction 0", "val_fraction 0.6",
             "val_fraction nan", "val_fraction text", "no output", "unknown flag"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, case):
  if case == "tokenizer not json":
    pytest.importorskip("tokenizers")
  cases = _bad_cases(tmp_path)
  assert sorted(cases) == sorted(BAD_CASES)
  args, needle = cases[case]
  assert _run(*args) == 2
  captured = capsys.readouterr()
  lines = captured.err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("jaxbench prepare: bad input: "), captured.err
  assert needle in lines[0]
  assert captured.out == ""
  assert not os.path.exists(tmp_path / "out")  # nothing left behind


def test_bad_input_from_the_command_line_has_no_traceback(tmp_path):
  result = _prepare_cli([f"--input={tmp_path / 'missing'}", f"--output={tmp_path / 'out'}"], tmp_path)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"jaxbench prepare: bad input: --input: no such file or folder: {tmp_path / 'missing'}"]


# --- TokenFileData ---------------------------------------------------------------------------------
@pytest.fixture
def dataset(tmp_path):
  corpus = tmp_path / "corpus"
  corpus.mkdir()
  for i in range(8):
    (corpus / f"{i}.txt").write_text(f"document {i}: " + "abcdefghij" * (20 + i) + "\n")
  prepare.prepare([str(corpus)], str(tmp_path / "data"), val_fraction=0.25, progress=False)
  return str(tmp_path / "data")


def test_batches_are_pure_functions_of_seed_and_step(dataset):
  c = _config()
  data = TokenFileData(dataset, "train", c)
  batch = data.batch(3)
  assert batch.shape == (2, 4, 17) and batch.dtype == np.int32
  assert np.array_equal(batch, TokenFileData(dataset, "train", c).batch(3))  # no iterator state
  assert not np.array_equal(batch, data.batch(4))
  assert not np.array_equal(batch, TokenFileData(dataset, "train", _config(seed=1)).batch(3))

  # The contract other frameworks implement: offsets from default_rng([seed, 2, step]), row r =
  # window r, microbatch i = rows [i*B/k, (i+1)*B/k).
  tokens = np.fromfile(os.path.join(dataset, "train.bin"), dtype="<u2")
  starts = np.random.default_rng([0, 2, 3]).integers(0, len(tokens) - 17 + 1, size=8)
  rows = np.stack([tokens[s:s + 17] for s in starts]).astype(np.int32)
  assert np.array_equal(batch.reshape(8, 17), rows)
  assert np.array_equal(batch[1], rows[4:8])


def test_windows_cover_the_whole_file(dataset):
  data = TokenFileData(dataset, "val", _config(batch_size=64, microbatches=1, seq_len=8))
  starts = np.concatenate([data.starts(s) for s in range(50)])
  assert starts.min() == 0 and starts.max() == data.tokens - 9  # the last window ends at the end


def test_describe_and_meta(dataset):
  data = TokenFileData(dataset, "val", _config())
  meta = read_json(os.path.join(dataset, "meta.json"))
  assert data.meta == meta
  assert data.describe() == {
      "path": dataset, "split": "val", "tokens": meta["val_tokens"], "vocab_size": 257,
      "dtype": "uint16", "tokenizer": "bytes", "eod_token": 256, "sha256": meta["sha256"]["val.bin"]}


def test_batch_is_fast(tmp_path):
  folder = tmp_path / "big"
  folder.mkdir()
  n = 4_000_000
  np.random.default_rng(0).integers(0, 50_000, n, dtype=np.uint16).tofile(folder / "train.bin")
  (folder / "val.bin").write_bytes(b"")
  (folder / "meta.json").write_text(json.dumps({
      "format": "jaxbench-tokens-v1", "vocab_size": 50_000, "dtype": "uint16", "train_tokens": n,
      "val_tokens": 0, "sha256": {}}))
  data = TokenFileData(str(folder), "train", _config(batch_size=64, microbatches=4, seq_len=2048,
                                                     vocab_size=50_304))
  data.batch(0)
  times = []
  for step in range(1, 21):
    start = time.perf_counter()
    data.batch(step)
    times.append(time.perf_counter() - start)
  assert np.median(times) < 0.010, times


def _corrupt(dataset, what):
  meta_path = os.path.join(dataset, "meta.json")
  if what == "no meta":
    os.unlink(meta_path)
  elif what == "foreign meta":
    with open(meta_path, "w") as f:
      json.dump({"format": "something-else"}, f)
  elif what == "no split file":
    os.unlink(os.path.join(dataset, "train.bin"))
  elif what == "truncated":
    with open(os.path.join(dataset, "train.bin"), "r+b") as f:
      f.truncate(os.path.getsize(f.name) - 2)


@pytest.mark.parametrize("what", ["no meta", "foreign meta", "no split file", "truncated"])
def test_bad_folders_raise_config_error(dataset, what):
  _corrupt(dataset, what)
  with pytest.raises(ConfigError) as e:
    TokenFileData(dataset, "train", _config())
  assert e.value.key == "data.path"


def test_missing_path_or_a_file(dataset, tmp_path):
  for path in (str(tmp_path / "nowhere"), os.path.join(dataset, "meta.json")):
    with pytest.raises(ConfigError) as e:
      TokenFileData(path, "train", _config())
    assert e.value.key == "data.path"


def test_vocab_too_small_names_model_vocab_size(dataset):
  with pytest.raises(ConfigError) as e:
    TokenFileData(dataset, "train", _config(vocab_size=256))
  assert e.value.key == "model.vocab_size" and "257" in str(e.value)


def test_fewer_tokens_than_one_sequence(dataset):
  tokens = read_json(os.path.join(dataset, "meta.json"))["val_tokens"]
  TokenFileData(dataset, "val", _config(seq_len=tokens - 1))  # exactly one window fits
  with pytest.raises(ConfigError) as e:
    TokenFileData(dataset, "val", _config(seq_len=tokens))
  assert e.value.key == "data.path" and "seq_len" in str(e.value)


def test_large_vocabularies_use_uint32(tmp_path):
  assert prepare.token_dtype(257) == np.dtype("<u2") and prepare.token_dtype(65_536) == np.dtype("<u2")
  assert prepare.token_dtype(65_537) == np.dtype("<u4")
  folder = tmp_path / "wide"
  folder.mkdir()
  tokens = np.arange(100_000, 100_100, dtype="<u4")
  tokens.tofile(folder / "train.bin")
  tokens[:20].tofile(folder / "val.bin")
  (folder / "meta.json").write_text(json.dumps({
      "format": "jaxbench-tokens-v1", "vocab_size": 128_256, "dtype": "uint32", "train_tokens": 100,
      "val_tokens": 20, "sha256": {}}))
  batch = TokenFileData(str(folder), "train", _config(vocab_size=128_256)).batch(0)
  assert batch.dtype == np.int32 and batch.min() >= 100_000
  assert np.all(np.diff(batch, axis=-1) == 1)  # each row is a contiguous window


class _Terminal(io.StringIO):

  def isatty(self):
    return True


@pytest.mark.parametrize("tty", [True, False])
def test_progress_display(tty):
  stream = _Terminal() if tty else io.StringIO()
  status = prepare.Progress(total_bytes=2_000_000, total_files=3, stream=stream)
  status.add_bytes(10)  # within the first second: nothing
  assert stream.getvalue() == ""
  status.next = 0.0  # as if a second had passed
  status.files, status.tokens = 1, 12_345
  status.add_bytes(999_990)
  status.add_bytes(1)  # throttled: no second update this soon
  status.close()
  out = stream.getvalue()
  assert "1.0/2.0 MB (50%)  files 1/3  tokens 12,345" in out
  assert out.count("prepare:") == 1
  assert out.startswith("\r") == tty and out.endswith("\n")
