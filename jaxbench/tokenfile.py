"""Training batches from a folder made by `jaxbench prepare` (`data.path`).

The interface mirrors `jaxbench.data.SyntheticData`: `batch(step)` is a pure function of
(seed, step), so a resumed run needs no iterator state and every framework reads the same tokens
in the same order. A batch is B windows of seq_len + 1 tokens at start offsets drawn uniformly (with
replacement) by `np.random.default_rng([seed, 2, step])`; 2 keeps this stream apart from the
synthetic data's [seed, 1, step]. Windows may cross end-of-document tokens, as in GPT-style packing.

The token file is memory-mapped, never loaded: a batch reads only its own B * (seq_len + 1) tokens.
At start-up the sizes are checked, and every token id against the model's vocabulary (an id the
model has no row for would train on garbage or diverge, far from its cause): the largest id of each
file is found by one pass over it (memory bandwidth: about a second per GB) and kept in meta.json's
`token_scan` with the file's size and modification time, so a later run reads it instead; `jaxbench
prepare` writes it. The sha256 in meta.json is for provenance (hashing a large file would delay
every run), and `describe()` passes it on to run.json.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from jaxbench.errors import ConfigError

FORMAT = "jaxbench-tokens-v1"
SPLITS = ("train", "val")
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


def read_meta(path: str) -> dict:
  """meta.json of a prepared folder; ConfigError('data.path') when it is not one."""
  if not os.path.isdir(path):
    raise ConfigError("data.path", f"{path!r} is not a folder; make one with `jaxbench prepare`")
  meta_path = os.path.join(path, "meta.json")
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except FileNotFoundError:
    raise ConfigError("data.path", f"{path} has no meta.json: not a folder made by `jaxbench prepare` "
                      "(or it was interrupted)") from None
  except (OSError, ValueError) as e:
    raise ConfigError("data.path", f"cannot read {meta_path}: {e}") from None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT:
    found = meta.get("format") if isinstance(meta, dict) else None
    raise ConfigError("data.path", f"{meta_path} has format {found!r}; expected {FORMAT!r}")
  bad = [k for k in ("vocab_size", "train_tokens", "val_tokens")
         if not isinstance(meta.get(k), int) or meta[k] < 0]
  if bad:
    raise ConfigError("data.path", f"{meta_path} lacks valid {', '.join(bad)}: not a complete dataset")
  if meta.get("dtype") not in DTYPES:
    raise ConfigError("data.path", f"{meta_path} has dtype {meta.get('dtype')!r}; allowed: "
                      f"{', '.join(DTYPES)}")
  return meta


SCAN_CHUNK_TOKENS = 1 << 26  # ids read per pass of the scan (128 MiB of uint16)
SCAN_NOTE_BYTES = 1 << 30  # files from this size say that they are being scanned


def file_stamp(file: str) -> dict:
  """What says a token file is the one a scan saw: its size and modification time."""
  st = os.stat(file)
  return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def scan_max_id(file: str, dtype: np.dtype) -> int:
  """The largest token id in `file` (-1 when empty), one chunked pass over the memory map."""
  if not os.path.getsize(file):
    return -1
  array = np.memmap(file, dtype=dtype, mode="r")
  return max(int(array[start:start + SCAN_CHUNK_TOKENS].max())
             for start in range(0, len(array), SCAN_CHUNK_TOKENS))


def first_at_or_above(file: str, dtype: np.dtype, limit: int) -> int:
  """The index of the first token id >= `limit` in `file` (-1 when none), for the message."""
  array = np.memmap(file, dtype=dtype, mode="r")
  for start in range(0, len(array), SCAN_CHUNK_TOKENS):
    hits = np.flatnonzero(array[start:start + SCAN_CHUNK_TOKENS] >= limit)
    if hits.size:
      return start + int(hits[0])
  return -1


def max_token_id(path: str, meta: dict, name: str, dtype: np.dtype) -> int:
  """The largest id in data folder `path`'s token file `name`: meta.json's `token_scan` entry when
  the file's size and modification time are still the ones it was taken with, else a scan, whose
  result is written back to meta.json where the folder allows it (a read-only dataset is scanned
  by each run)."""
  file = os.path.join(path, name)
  stamp = file_stamp(file)
  cached = (meta.get("token_scan") or {}).get(name) or {}
  if isinstance(cached.get("max_id"), int) and all(cached.get(k) == v for k, v in stamp.items()):
    return cached["max_id"]
  if stamp["size"] >= SCAN_NOTE_BYTES:
    print(f"  checking the token ids of {file} ({stamp['size'] / 2**30:.1f} GiB) against the "
          "vocabulary, once ...", flush=True)
  top = scan_max_id(file, dtype)
  _remember_scan(path, name, {"max_id": top, **stamp})
  return top


def _remember_scan(path: str, name: str, entry: dict) -> None:
  """meta.json's token_scan[name] = entry, replaced atomically; quietly nothing when the folder or
  meta.json cannot be written."""
  meta_file = os.path.join(path, "meta.json")
  try:
    with open(meta_file) as f:
      meta = json.load(f)
    meta.setdefault("token_scan", {})[name] = entry
    fd, tmp = tempfile.mkstemp(dir=path, prefix=".tmp-", suffix=".json")
  except (OSError, ValueError, AttributeError):
    return
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(meta, f, indent=1)
      f.write("\n")
    os.replace(tmp, meta_file)
  except OSError:
    if os.path.exists(tmp):
      os.unlink(tmp)


class TokenFileData:

  def __init__(self, path: str, split: str, c):
    if split not in SPLITS:
      raise ConfigError("data.split", f"{split!r}; allowed: {', '.join(SPLITS)}")
    self.path, self.split = path, split
    self.meta = read_meta(path)
    self.seed = int(c.seed)
    self.shape = (c.microbatches, c.batch_size // c.microbatches, c.seq_len + 1)
    self.dtype = DTYPES[self.meta["dtype"]]
    self.tokens = self.meta[f"{split}_tokens"]

    vocab = int(self.meta["vocab_size"])
    if vocab > c.model.vocab_size:
      raise ConfigError("model.vocab_size", f"{c.model.vocab_size} is smaller than the vocabulary of "
                        f"data.path={path} ({vocab} token ids); set --config.model.vocab_size={vocab} "
                        "or more")
    file = os.path.join(path, f"{split}.bin")
    if not os.path.isfile(file):
      raise ConfigError("data.path", f"{file} is missing")
    size, expected = os.path.getsize(file), self.tokens * self.dtype.itemsize
    if size != expected:
      raise ConfigError("data.path", f"{file} holds {size} bytes but meta.json says {self.tokens} "
                        f"{self.meta['dtype']} tokens ({expected} bytes): truncated or replaced")
    length = self.shape[2]
    if self.tokens < length:
      raise ConfigError("data.path", f"{file} holds {self.tokens} tokens, fewer than one sequence "
                        f"(seq_len + 1 = {length}); use more text or seq_len <= {self.tokens - 1}")
    top = max_token_id(path, self.meta, f"{split}.bin", self.dtype)
    if top >= c.model.vocab_size or top >= vocab:
      limit = min(c.model.vocab_size, vocab)
      at = first_at_or_above(file, self.dtype, limit)
      if top >= c.model.vocab_size:
        fix = (f"model.vocab_size={c.model.vocab_size} has no row for it (ids 0 .. "
               f"{c.model.vocab_size - 1}); set --config.model.vocab_size={top + 1} or more")
      else:
        fix = (f"meta.json's vocab_size is {vocab}, so the file is not the one `jaxbench prepare` "
               "wrote there; prepare the data again")
      raise ConfigError("data.path", f"{file} holds token id {top} (the first id >= {limit} is "
                        f"token {at:,} of the file): {fix}")
    self.file = file
    self.array = np.memmap(file, dtype=self.dtype, mode="r")
    # Row i of this view is the window starting at token i: no copy, and batch() is one gather.
    self.windows = np.lib.stride_tricks.sliding_window_view(self.array, length)

  def starts(self, step: int) -> np.ndarray:
    """Start offsets of the B windows of `step`, in batch-row order."""
    rng = np.random.default_rng([self.seed, 2, step])
    rows = self.shape[0] * self.shape[1]
    return rng.integers(0, self.tokens - self.shape[2] + 1, size=rows)

  def batch(self, step: int) -> np.ndarray:
    """int32 [microbatches, batch_size // microbatches, seq_len + 1]: microbatch i = rows i*B/k..."""
    return self.windows[self.starts(step)].astype(np.int32).reshape(self.shape)

  def describe(self) -> dict:
    """What run.json records about the data."""
    return {"path": os.path.abspath(self.path), "split": self.split, "tokens": self.tokens,
            "vocab_size": self.meta["vocab_size"], "dtype": self.meta["dtype"],
            "tokenizer": self.meta.get("tokenizer"), "eod_token": self.meta.get("eod_token"),
            "sha256": (self.meta.get("sha256") or {}).get(f"{self.split}.bin")}
