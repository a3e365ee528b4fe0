"""`jaxbench prepare`: text files and folders -> a token folder that `data.path` can train on.

    jaxbench prepare --input=PATH[,PATH...] --output=DIR [--tokenizer=bytes|PATH/tokenizer.json]
                     [--val_fraction=0.01] [--seed=0]

The folder holds `train.bin` and `val.bin` (flat little-endian token arrays, uint16 when the
vocabulary fits, else uint32) and `meta.json` (format `jaxbench-tokens-v1`), which is written last:
a folder without it is not a dataset. `jaxbench.tokenfile.TokenFileData` reads it back.

Documents are files. Folders are walked recursively in sorted order; a file is skipped, counted and
listed (never silently) when it is empty, has a NUL byte in its first 8 KiB, or is not valid UTF-8.
Each document's tokens are followed by an end-of-document token when the tokenizer has one.

Tokenizers:
  * `bytes`: the UTF-8 bytes themselves (vocab 257, id 256 = EOD); exact, needs nothing.
  * a Hugging Face `tokenizer.json` (the `tokenizers` library, extra `jaxbench[data]`). Text is
    encoded in blocks of about 64 Ki characters (a shorter document is one block) that end just
    before a line starting with a non-space character (or before a blank line's last newline), at
    the first such place where the tokenizer's own normalizer and pre-tokenizer give the same
    pre-tokens around the cut, cut or not (GPT-2's takes a blank line's "\n\n" at a block's end as
    one piece, two within the document), so the ids of GPT-2 and Llama-3 style byte-level BPE
    equal whole-document encoding (after 64 refused places in one block, the next is taken).
    Tokenizers whose pre-tokens never end at line starts (that add a prefix to every input,
    SentencePiece's "▁", or have no pre-tokenizer) are cut at the first line start and add that
    prefix once per block.
    Blocks stay small because one `encode` call holds ~200 bytes per character (measured with
    tokenizers 0.23: +190 MB for 1 MiB of text). Special-token text inside documents (a literal
    "<|endoftext|>") is encoded as text, so the only EOD tokens are the separators we add.

Memory stays bounded by the chunk size (1 MiB): files are read, decoded and written a chunk at a
time, so inputs larger than RAM are fine. The price of one pass is that a file found not to be
UTF-8 part-way is taken back out of the output (a truncate), and the sha256 digests are computed
by reading the outputs once at the end.

Validation split, by documents: a file goes to val when its rank by sha256(seed, relative path)
is among the round(val_fraction * n) smallest (at least 1, at most n - 1). Hashing paths (not
shuffling a list) keeps the split of a document stable when other files are added. With a single
document its token stream is cut at the (1 - val_fraction) point instead. meta.json says which.
"""

from __future__ import annotations

import argparse
import codecs
import datetime
import hashlib
import json
import math
import os
import re
import sys
import time

import numpy as np

from jaxbench import cli, tokenfile
from jaxbench.errors import ConfigError, bad_input, first_line

FORMAT = "jaxbench-tokens-v1"
OUTPUT_FILES = ("train.bin", "val.bin", "meta.json")
SPLITS = ("train", "val")
# Bytes read (and so decoded and tokenized) at a time; tests shrink it with --chunk_bytes.
CHUNK_BYTES = 1 << 20
SNIFF_BYTES = 8192  # a NUL byte this early marks a binary file (the heuristic of git and grep)
# Characters per tokenizer.json encode call (a block runs on to the next line start).
BLOCK_CHARS = 1 << 16
LINE_START = re.compile(r"\n(?=\S)")  # where a block may end: after a newline, before a non-space
# Where a block checked by the tokenizer may end: also before the last newline of a blank line
# (GPT-2's pre-tokenizer takes "\n\n" at an input's end as one piece, two within the document).
CHECKED_CUTS = re.compile(r"(?<=\n)(?=\n\S)|\n(?=\S)")
CUT_CONTEXT = 256  # characters each side of a block's end that decide whether it cuts cleanly
MAX_CUT_CHECKS = 64  # places refused in one block before the next is taken unchecked
BYTES_VOCAB, BYTES_EOD = 257, 256
# End-of-document tokens, in order of preference: GPT-2/NeoX, Llama-2/Mistral, Llama-3, Gemma.
EOS_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")
SKIPPED_LISTED = 10  # skipped files named on stderr; meta.json lists them all


def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype("<u2" if vocab_size <= 1 << 16 else "<u4")


def dtype_name(dtype: np.dtype) -> str:
  return np.dtype(dtype).name  # 'uint16' / 'uint32'; the byte order is always little-endian


# --- Tokenizers: `encode(pieces)` maps a document's (raw bytes, text) chunks to id arrays ----------
class ByteTokenizer:
  vocab_size = BYTES_VOCAB
  eod = BYTES_EOD
  meta = "bytes"
  method = "bytes: one token per UTF-8 byte (exact)"

  def encode(self, pieces):
    for raw, _ in pieces:
      yield np.frombuffer(raw, np.uint8)


class JsonTokenizer:
  """A Hugging Face tokenizer.json through the `tokenizers` library."""

  def __init__(self, path: str):
    if os.path.isdir(path):
      path = os.path.join(path, "tokenizer.json")
    try:
      with open(path, "rb") as f:
        blob = f.read()
    except OSError as e:
      raise ConfigError("--tokenizer", f"cannot read {path}: {e.strerror}; allowed: bytes or a "
                        "tokenizer.json") from None
    try:
      import tokenizers  # here, not at the top: an optional extra that --tokenizer=bytes never needs
    except ImportError:
      raise ConfigError("--tokenizer", "a tokenizer.json needs the `tokenizers` library: "
                        "pip install 'jaxbench[data]' (or use --tokenizer=bytes)") from None
    try:
      self.tokenizer = tokenizers.Tokenizer.from_str(blob.decode("utf-8"))
    except Exception as e:  # the Rust side raises plain Exception for any parse error
      raise ConfigError("--tokenizer",
                        f"cannot load {path} as a tokenizer.json: {first_line(e)}") from None
    # Corpus text that happens to spell a special token stays text (needs tokenizers >= 0.15).
    if hasattr(self.tokenizer, "encode_special_tokens"):
      self.tokenizer.encode_special_tokens = True
    vocab = self.tokenizer.get_vocab(with_added_tokens=True)
    if not vocab:
      raise ConfigError("--tokenizer", f"{path} has an empty vocabulary")
    # max id + 1, not the count: ids can have holes, and every id must fit the dtype and the model.
    self.vocab_size = max(vocab.values()) + 1
    eos = [i for i in map(self.tokenizer.token_to_id, EOS_NAMES) if i is not None]
    self.eod = eos[0] if eos else None
    self.meta = {"path": os.path.abspath(path), "sha256": hashlib.sha256(blob).hexdigest()}
    # A tokenizer whose pre-tokens do not end at line starts (one that adds a prefix to every
    # input, or has no pre-tokenizer) would have every place checked and refused: not checked.
    self.checks_cuts = self.cuts_cleanly("one two\nthree four\n", len("one two\n"))
    where = ("before a line that starts with a non-space character or a blank line's last "
             "newline, where the pre-tokens around the end are those of the whole document (after "
             "64 refused places in a block, at the next)" if self.checks_cuts else
             "before a line that starts with a non-space character (the tokenizer's pre-tokens do "
             "not end at line starts: ids at block starts may differ from whole-document "
             "encoding)")
    self.method = (f"tokenizer.json: encoded in blocks of about {BLOCK_CHARS} characters ending "
                   f"{where}; no special tokens added by the tokenizer; special-token text in "
                   "documents encoded as text")

  def encode(self, pieces):
    clean = self.cuts_cleanly if self.checks_cuts else None
    for block in line_blocks((text for _, text in pieces), BLOCK_CHARS, clean, CUT_CONTEXT,
                             MAX_CUT_CHECKS):
      ids = self.tokenizer.encode(block, add_special_tokens=False).ids
      yield np.asarray(ids, dtype=np.int64)

  def pieces(self, text: str) -> list[str]:
    """`text` as the tokenizer's model sees it: normalized and cut into pre-tokens (the whole
    text as one piece where the tokenizer has no pre-tokenizer)."""
    if self.tokenizer.normalizer is not None:
      text = self.tokenizer.normalizer.normalize_str(text)
    if self.tokenizer.pre_tokenizer is None:
      return [text] if text else []
    return [piece for piece, _ in self.tokenizer.pre_tokenizer.pre_tokenize_str(text)]

  def cuts_cleanly(self, text: str, cut: int) -> bool:
    """Whether encoding text[:cut] and text[cut:] apart gives the ids of encoding them together:
    the pre-tokens around the cut, CUT_CONTEXT characters each side, are the same either way (the
    model merges within a pre-token only). Not so after a blank line for GPT-2's pre-tokenizer
    (a block's trailing "\n\n" is one pre-token, two within the document), and never where a
    tokenizer adds a prefix to every input or has no pre-tokenizer."""
    lo, hi = max(0, cut - CUT_CONTEXT), cut + CUT_CONTEXT
    return self.pieces(text[lo:cut]) + self.pieces(text[cut:hi]) == self.pieces(text[lo:hi])


def line_blocks(texts, block_chars: int, clean=None, context: int = 0, max_checks: int = 64):
  """Regroups a document's text chunks into blocks of about `block_chars` characters (a shorter
  document stays one block), each ending just before a line that starts with a non-space. With
  `clean(text, cut)`: at the first such place, or place before a blank line's last newline, that
  it accepts, judged with `context` characters after the place (after `max_checks` refusals in one
  block, at the next). With no such place by 4 blocks' length: before a space, else anywhere."""
  pending, searched, checks = "", 0, 0

  def accept(text: str, cut: int) -> bool:
    nonlocal checks
    if clean is None or checks >= max_checks:
      return True
    checks += 1
    return clean(text, cut)

  for text in texts:
    pending += text
    while len(pending) > block_chars:
      cut = _line_cut(pending, max(block_chars, searched), accept, context if clean else 0,
                      CHECKED_CUTS if clean else LINE_START)
      if cut is None and len(pending) > 4 * block_chars:  # no (clean) line start: a long line
        space = pending.rfind(" ", 1, block_chars + 1)
        cut = space if space > 0 else block_chars
      elif cut is None:  # wait for more text: the last places still need what follows them
        searched = max(block_chars, len(pending) - (context if clean else 0) - 1)
        break
      yield pending[:cut]
      pending, searched, checks = pending[cut:], 0, 0
  if pending:
    yield pending


def _line_cut(text: str, start: int, accept, context: int, places: re.Pattern) -> int | None:
  """The first of `places` (the end of a match) at or after `start`, with `context` characters
  after it, that `accept(text, place)` takes; None when there is none yet."""
  for found in places.finditer(text, start):
    if found.end() + context > len(text):
      return None
    if accept(text, found.end()):
      return found.end()
  return None


# --- Inputs ---------------------------------------------------------------------------------------
class NotText(Exception):
  """A file that is not UTF-8 text; the message says why."""


def find_files(inputs: list[str], exclude: str) -> list[tuple[str, str]]:
  """(path, path relative to its input) of every file, folders walked recursively in sorted order.

  A file named twice (or reached twice through links) is used once; `exclude` (the output folder)
  is never walked, so preparing into a folder inside the corpus does not read our own outputs.
  """
  found, seen = [], set()
  for spec in inputs:
    if not os.path.exists(spec):
      raise ConfigError("--input", f"no such file or folder: {spec}")
    if os.path.isdir(spec):
      entries = []
      for root, dirs, names in os.walk(spec):
        dirs[:] = [d for d in dirs if os.path.realpath(os.path.join(root, d)) != exclude]
        entries += [os.path.join(root, name) for name in names]
      entries = sorted((os.path.relpath(p, spec), p) for p in entries)
    else:
      entries = [(os.path.basename(spec), spec)]
    for rel, path in entries:
      real = os.path.realpath(path)
      if real not in seen and os.path.isfile(path):
        seen.add(real)
        found.append((path, rel))
  return found


def sniff(path: str) -> str | None:
  """Why the file is not a document ('empty' / 'binary: ...'), judged by its first 8 KiB; or None."""
  try:
    with open(path, "rb") as f:
      head = f.read(SNIFF_BYTES)
  except OSError as e:
    raise ConfigError("--input", f"cannot read {path}: {e.strerror}") from None
  if not head:
    return "empty"
  if b"\0" in head:
    return f"binary: NUL byte in the first {SNIFF_BYTES // 1024} KiB"
  try:
    codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
  except UnicodeDecodeError as e:
    return f"binary: not valid UTF-8 at byte {e.start}"
  return None


def read_text(path: str, chunk_bytes: int, on_bytes):
  """Yields (raw bytes, decoded text) chunk by chunk; NotText at the first invalid UTF-8 byte.

  The incremental decoder holds back a multi-byte character cut by a chunk boundary until the
  next chunk completes it.
  """
  decoder = codecs.getincrementaldecoder("utf-8")()
  offset = 0
  try:
    with open(path, "rb") as f:
      while raw := f.read(chunk_bytes):
        try:
          text = decoder.decode(raw)
        except UnicodeDecodeError as e:
          raise NotText(f"binary: not valid UTF-8 near byte {offset + e.start}") from None
        on_bytes(len(raw))
        yield raw, text
        offset += len(raw)
      try:
        decoder.decode(b"", final=True)
      except UnicodeDecodeError:
        raise NotText("binary: not valid UTF-8 (a truncated character at the end)") from None
  except OSError as e:
    raise ConfigError("--input", f"cannot read {path}: {e.strerror}") from None


def val_documents(rels: list[str], val_fraction: float, seed: int) -> set[int]:
  """Indices of the documents held out for val: the smallest sha256(seed, relative path)."""
  n = len(rels)
  if n < 2:
    return set()
  n_val = min(n - 1, max(1, round(val_fraction * n)))
  keys = sorted((hashlib.sha256(f"{seed}\0{rel}".encode()).hexdigest(), i) for i, rel in enumerate(rels))
  return {i for _, i in keys[:n_val]}


# --- Outputs --------------------------------------------------------------------------------------
class TokenWriter:
  """Appends one split's tokens to `<split>.bin.partial`, a document at a time."""

  def __init__(self, folder: str, split: str, dtype: np.dtype):
    self.name = f"{split}.bin"
    self.path = os.path.join(folder, self.name + ".partial")
    self.dtype = dtype
    self.file = open(self.path, "wb")
    self.tokens = 0
    self.documents = []  # (source, first token, end token)

  def write(self, ids: np.ndarray):
    self.file.write(np.asarray(ids).astype(self.dtype, copy=False).tobytes())
    self.tokens += len(ids)

  def truncate(self, tokens: int):
    self.file.seek(tokens * self.dtype.itemsize)
    self.file.truncate()
    self.tokens = tokens

  def move_tail(self, start: int, dst: TokenWriter):
    """Moves tokens [start:] to the end of `dst`: how a last document or a token cut changes split."""
    self.file.flush()
    with open(self.path, "rb") as f:
      f.seek(start * self.dtype.itemsize)
      while block := f.read(CHUNK_BYTES):
        dst.file.write(block)
    dst.tokens += self.tokens - start
    moved = [(src, a, b) for src, a, b in self.documents if a >= start]
    dst.documents += [(src, dst.tokens - (self.tokens - a), dst.tokens - (self.tokens - b))
                      for src, a, b in moved]
    self.documents = [d for d in self.documents if d[1] < start]
    self.truncate(start)

  def finish(self) -> tuple[str, dict]:
    """Closes, moves into place; returns the sha256 (read back: truncates break a running hash)
    and meta.json's token_scan entry (the largest id, with the file's size and time, which a run
    then reads instead of scanning: tokenfile.max_token_id)."""
    self.file.close()
    digest = hashlib.sha256()
    top = -1
    with open(self.path, "rb") as f:
      while block := f.read(CHUNK_BYTES):
        digest.update(block)
        ids = np.frombuffer(block[:len(block) - len(block) % self.dtype.itemsize], self.dtype)
        if ids.size:
          top = max(top, int(ids.max()))
    final = os.path.join(os.path.dirname(self.path), self.name)
    os.replace(self.path, final)
    return digest.hexdigest(), {"max_id": top, **tokenfile.file_stamp(final)}

  def discard(self):
    self.file.close()
    if os.path.exists(self.path):
      os.unlink(self.path)


class Progress:
  """One status line on stderr: redrawn 4x a second on a terminal, a line every 10 s in a log.

  Nothing for the first second, so quick runs (and tests) print no progress at all.
  """

  def __init__(self, total_bytes: int, total_files: int, stream=None, enabled: bool = True):
    self.stream = stream or sys.stderr
    self.tty = enabled and self.stream.isatty()
    self.interval = 0.25 if self.tty else 10.0
    self.enabled = enabled
    self.total_bytes, self.total_files = total_bytes, total_files
    self.bytes = self.files = self.tokens = 0
    self.start = time.monotonic()
    self.next = self.start + 1.0
    self.shown = False

  def add_bytes(self, n: int):
    self.bytes += n
    now = time.monotonic()
    if self.enabled and now >= self.next:
      self.next = now + self.interval
      self.shown = True
      line = self.line(now)
      self.stream.write(f"\r{line}\033[K" if self.tty else line + "\n")
      self.stream.flush()

  def line(self, now: float) -> str:
    elapsed = max(now - self.start, 1e-9)
    percent = 100.0 * self.bytes / self.total_bytes if self.total_bytes else 100.0
    return (f"prepare: {self.bytes / 1e6:,.1f}/{self.total_bytes / 1e6:,.1f} MB ({percent:.0f}%)  "
            f"files {self.files}/{self.total_files}  tokens {self.tokens:,}  "
            f"{self.bytes / 1e6 / elapsed:.1f} MB/s")

  def close(self):
    if self.tty and self.shown:
      self.stream.write("\n")
      self.stream.flush()


# --- The command ------------------------------------------------------------------------------------
def load_tokenizer(spec: str):
  return ByteTokenizer() if spec == "bytes" else JsonTokenizer(spec)


def check_output(folder: str) -> str:
  """The output folder's real path; refuses a file or a folder that already holds a dataset."""
  if os.path.exists(folder) and not os.path.isdir(folder):
    raise ConfigError("--output", f"{folder} exists and is not a folder")
  held = [name for name in OUTPUT_FILES if os.path.exists(os.path.join(folder, name))]
  if held:
    raise ConfigError("--output", f"{folder} already holds a prepared dataset ({', '.join(held)}); "
                      "refusing to overwrite: choose a new folder or delete it")
  return os.path.realpath(folder)


def prepare(inputs: list[str], output: str, tokenizer: str = "bytes", val_fraction: float = 0.01,
            seed: int = 0, chunk_bytes: int = CHUNK_BYTES, progress: bool = True) -> dict:
  """Writes the dataset; returns meta.json's contents. ConfigError on bad input (nothing kept)."""
  if not 0.0 < val_fraction <= 0.5:  # also false for NaN
    raise ConfigError("--val_fraction", f"{val_fraction} must be in (0, 0.5]")
  if chunk_bytes < 1:
    raise ConfigError("--chunk_bytes", f"{chunk_bytes} must be >= 1")
  if not inputs:
    raise ConfigError("--input", "no input paths given")
  out_real = check_output(output)
  tok = load_tokenizer(tokenizer)
  documents, skipped = classify(find_files(inputs, exclude=out_real))
  if not documents:
    raise ConfigError("--input", f"no usable text: {_skipped_counts(skipped)}")
  held_out = val_documents([rel for _, rel in documents], val_fraction, seed)

  created = not os.path.exists(output)
  status = Progress(sum(os.path.getsize(p) for p, _ in documents), len(documents), enabled=progress)
  writers = {}
  try:
    try:
      os.makedirs(output, exist_ok=True)
      writers = {split: TokenWriter(output, split, token_dtype(tok.vocab_size)) for split in SPLITS}
    except OSError as e:
      raise ConfigError("--output", f"cannot write into {output}: {e.strerror}") from None
    for i, (path, _) in enumerate(documents):
      out = writers["val" if i in held_out else "train"]
      why = write_document(tok, path, out, chunk_bytes, status)
      if why:
        skipped.append({"path": os.path.abspath(path), "kind": why.split(":")[0], "why": why})
    status.close()
    if not writers["train"].documents and not writers["val"].documents:
      raise ConfigError("--input", f"no usable text: {_skipped_counts(skipped)}")
    split = _settle_split(writers["train"], writers["val"], val_fraction, seed)
    finished = {w.name: w.finish() for w in writers.values()}
    digests = {name: digest for name, (digest, _) in finished.items()}
    token_scan = {name: scan for name, (_, scan) in finished.items()}
  except BaseException:
    status.close()
    for w in writers.values():
      w.discard()
    if created:
      _remove_if_empty(output)
    raise

  written = {src for w in writers.values() for src, _, _ in w.documents}
  meta = {
      "format": FORMAT,
      "tokenizer": tok.meta,
      "vocab_size": int(tok.vocab_size),
      "dtype": dtype_name(token_dtype(tok.vocab_size)),
      "train_tokens": writers["train"].tokens,
      "val_tokens": writers["val"].tokens,
      "eod_token": tok.eod,
      "sources": [src for src in (os.path.abspath(p) for p, _ in documents) if src in written],
      "split": split,
      "tokenization": tok.method,
      "skipped": {"binary": sum(s["kind"] == "binary" for s in skipped),
                  "empty": sum(s["kind"] == "empty" for s in skipped),
                  "files": skipped},
      "sha256": digests,
      "token_scan": token_scan,
      "input_bytes": status.bytes,
      "seconds": round(time.monotonic() - status.start, 3),
      "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  }
  tmp = os.path.join(output, "meta.json.partial")
  with open(tmp, "w") as f:
    json.dump(meta, f, indent=1)
    f.write("\n")
  os.replace(tmp, os.path.join(output, "meta.json"))  # last: its presence marks a complete dataset
  return meta


def classify(files: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], list[dict]]:
  """(documents: the files that look like text, skipped: {"path", "kind", "why"} for the rest)."""
  documents, skipped = [], []
  for path, rel in files:
    why = sniff(path)
    if why is None:
      documents.append((path, rel))
    else:
      skipped.append({"path": os.path.abspath(path), "kind": why.split(":")[0], "why": why})
  return documents, skipped


def write_document(tok, path: str, out: TokenWriter, chunk_bytes: int, status: Progress) -> str | None:
  """Appends one document (+ EOD) to `out`; or takes it back out and says why it is no document."""
  start = out.tokens
  try:
    for ids in tok.encode(read_text(path, chunk_bytes, status.add_bytes)):
      out.write(ids)
      status.tokens += len(ids)
  except NotText as e:
    status.tokens -= out.tokens - start
    out.truncate(start)
    return str(e)
  finally:
    status.files += 1
  if out.tokens == start:  # e.g. a normalizer that strips everything
    return "empty: no tokens"
  if tok.eod is not None:
    out.write(np.array([tok.eod]))
    status.tokens += 1
  out.documents.append((os.path.abspath(path), start, out.tokens))
  return None


def _settle_split(train: TokenWriter, val: TokenWriter, val_fraction: float, seed: int) -> dict:
  """Makes both splits non-empty after the pass; returns meta.json's account of the split.

  The plan can come out one-sided when files chosen for a split turned out not to be text part-way;
  the last document of the other split then moves over (a tail copy, no rewrite).
  """
  n = len(train.documents) + len(val.documents)
  split = {"by": "documents", "val_fraction": val_fraction, "seed": seed,
           "rule": "val = the round(val_fraction * n) documents (at least 1, at most n - 1) with the "
                   "smallest sha256(f'{seed}\\0{path relative to its --input}')"}
  if n == 1:
    if val.documents:
      val.move_tail(0, train)
    total = train.tokens
    if total < 2:
      raise ConfigError("--input", f"the only document has {total} token; at least 2 are needed to "
                        "split it into train and val")
    cut = min(total - 1, max(1, math.floor((1.0 - val_fraction) * total)))
    train.move_tail(cut, val)  # the document starts at 0 < cut, so its record stays in train
    return {"by": "tokens", "val_fraction": val_fraction, "seed": seed, "cut_token": cut,
            "rule": "one document: train = its tokens [0, cut), val = [cut, end), "
                    "cut = floor((1 - val_fraction) * tokens)",
            "train_documents": 1, "val_documents": 1, "val_sources": [train.documents[0][0]]}
  if not val.documents:
    train.move_tail(train.documents[-1][1], val)
    split["adjusted"] = "the planned val documents were not text; the last train document moved to val"
  elif not train.documents:
    val.move_tail(val.documents[-1][1], train)
    split["adjusted"] = "the planned train documents were not text; the last val document moved to train"
  split.update(train_documents=len(train.documents), val_documents=len(val.documents),
               val_sources=[src for src, _, _ in val.documents])
  return split


def _skipped_counts(skipped: list[dict]) -> str:
  binary = sum(s["kind"] == "binary" for s in skipped)
  return f"{len(skipped)} file(s) found, {binary} binary, {len(skipped) - binary} empty"


def _remove_if_empty(folder: str):
  try:
    os.rmdir(folder)
  except OSError:
    pass


def _documents(n: int) -> str:
  return f"{n} document" + ("" if n == 1 else "s")


def summary_line(meta: dict, output: str) -> str:
  seconds = max(meta["seconds"], 1e-9)
  split = meta["split"]
  return (f"prepared {_documents(len(meta['sources']))} into {output}: "
          f"train {meta['train_tokens']:,} tokens ({_documents(split['train_documents'])}), "
          f"val {meta['val_tokens']:,} tokens ({_documents(split['val_documents'])}, "
          f"split by {split['by']}); "
          f"{meta['dtype']}, vocab {meta['vocab_size']}; skipped {meta['skipped']['binary']} binary, "
          f"{meta['skipped']['empty']} empty; {meta['input_bytes'] / 1e6:,.1f} MB in {seconds:.1f} s "
          f"({meta['input_bytes'] / 1e6 / seconds:.1f} MB/s)")


def _parse(args: list[str]) -> argparse.Namespace:
  parser = cli.FlagParser(prog="jaxbench prepare",
                   description="Text files or folders -> train.bin, val.bin, meta.json for data.path.")
  parser.add_argument("--input", action="append", required=True,
                      help="text files or folders (recursive), comma-separated or repeated")
  parser.add_argument("--output", required=True, help="a new folder for train.bin, val.bin, meta.json")
  parser.add_argument("--tokenizer", default="bytes",
                      help="`bytes` (vocab 257, 256 = end of document) or a Hugging Face tokenizer.json")
  parser.add_argument("--val_fraction", type=float, default=0.01,
                      help="fraction of documents held out for val, in (0, 0.5]")
  parser.add_argument("--seed", type=int, default=0, help="chooses the val documents")
  parser.add_argument("--chunk_bytes", type=int, default=CHUNK_BYTES, help=argparse.SUPPRESS)
  parser.add_argument("--quiet", action="store_true", help="no progress display on stderr")
  return parser.parse_args(args)


def main(argv=None) -> int:
  """argv as sys.argv: the program name first (the convention of every jaxbench command)."""
  argv = sys.argv if argv is None else argv
  try:
    args = _parse(list(argv[1:]))
    inputs = [p for spec in args.input for p in spec.split(",") if p]
    meta = prepare(inputs, args.output, tokenizer=args.tokenizer, val_fraction=args.val_fraction,
                   seed=args.seed, chunk_bytes=args.chunk_bytes, progress=not args.quiet)
  except ConfigError as e:
    return bad_input("jaxbench prepare", e)
  except KeyboardInterrupt:  # the partial outputs are already removed
    print("jaxbench prepare: interrupted; nothing written", file=sys.stderr)
    return 130
  skipped = meta["skipped"]["files"]
  for s in skipped[:SKIPPED_LISTED]:
    print(f"jaxbench prepare: skipped {s['path']} ({s['why']})", file=sys.stderr)
  if len(skipped) > SKIPPED_LISTED:
    print(f"jaxbench prepare: ... and {len(skipped) - SKIPPED_LISTED} more skipped files, listed in "
          "meta.json", file=sys.stderr)
  print(summary_line(meta, args.output))
  return 0


if __name__ == "__main__":
  sys.exit(main())
