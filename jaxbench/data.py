"""Synthetic token batches: the batch of step s is a pure function of (seed, s).

Framework-neutral numpy, so every implementation trains on the same tokens in the same order.
- `markov`: token x is followed by one of `markov_branching` successors x + o_j (mod vocab), the
  distinct offsets o_j drawn once from the seed, each with equal probability. A model can learn
  it (a bigram table): the loss falls from ln(vocab) towards ln(branching). Because successors are
  offsets, a whole batch is one cumulative sum: generating it never stalls the step.
- `uniform`: i.i.d. tokens, for throughput only (nothing to learn).

Batches have shape [microbatches, batch_size // microbatches, seq_len + 1]: inputs are [..., :-1],
targets [..., 1:].
"""

from __future__ import annotations

import queue
import threading
import time

import numpy as np


class SyntheticData:

  def __init__(self, c, stream: int = 1):
    """stream 1: training batches; another stream: held-out batches of the same process."""
    self.stream = stream
    self.kind = c.data.synthetic
    self.seed = int(c.seed)
    self.vocab = int(c.model.vocab_size)
    self.shape = (c.microbatches, c.batch_size // c.microbatches, c.seq_len + 1)
    table_rng = np.random.default_rng([self.seed, 0x7A81E])
    self.offsets = table_rng.choice(self.vocab, size=c.data.markov_branching, replace=False)
    self.successors = (np.arange(self.vocab)[:, None] + self.offsets[None, :]) % self.vocab

  def batch(self, step: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, self.stream, step])
    rows, length = self.shape[0] * self.shape[1], self.shape[2]
    if self.kind == "uniform":
      tokens = rng.integers(0, self.vocab, size=(rows, length), dtype=np.int32)
    else:
      # int32 partial sums stay exact: length * vocab < 2**31 for every preset (2049 * 128256).
      wide = np.int64 if length * self.vocab >= 2**31 else np.int32
      small = np.uint8 if len(self.offsets) <= 256 else np.int32
      choices = rng.integers(0, len(self.offsets), size=(rows, length), dtype=small)
      steps = self.offsets.astype(wide)[choices]
      steps[:, 0] = rng.integers(0, self.vocab, size=rows)  # the first token: uniform
      tokens = np.cumsum(steps, axis=1, dtype=wide) % self.vocab
    return tokens.astype(np.int32).reshape(self.shape)

  def entropy_floor(self) -> float:
    """The lowest loss a model can reach on this data (nats per token; the first is ignored)."""
    return float(np.log(self.vocab if self.kind == "uniform" else len(self.offsets)))


def make(c, split: str = "train"):
  """The run's data: token files from `data.path`, else synthetic tokens (stream 3 held out)."""
  if c.data.path:
    from jaxbench.tokenfile import TokenFileData
    return TokenFileData(c.data.path, split, c)
  return SyntheticData(c, stream=1 if split == "train" else 3)


def vocab_note(c, data) -> str | None:
  """A line for a model whose vocabulary is larger than its token files' (given on the command
  line; otherwise it is the data's own: config.parse_flags): rows no token uses."""
  meta = getattr(data, "meta", None)
  if not meta or meta["vocab_size"] >= c.model.vocab_size:
    return None
  return (f"model.vocab_size={c.model.vocab_size} is larger than data.path's vocabulary "
          f"({meta['vocab_size']}): {c.model.vocab_size - meta['vocab_size']} embedding rows no "
          "token uses")


class Prefetcher:
  """Makes the batches of steps first .. last-1 in a background thread, `depth` steps ahead, so
  reading and transferring data overlaps the device's work. `get` says how long it waited."""

  def __init__(self, make_batch, first: int, last: int, depth: int = 2):
    self._queue = queue.Queue(maxsize=depth)
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._fill, args=(make_batch, first, last), daemon=True)
    self._thread.start()

  def _fill(self, make_batch, first, last):
    for step in range(first, last):
      try:
        item = (step, make_batch(step), None)
      except BaseException as e:  # handed to the consumer, raised there
        item = (step, None, e)
      while not self._stop.is_set():
        try:
          self._queue.put(item, timeout=0.1)
          break
        except queue.Full:
          continue
      if self._stop.is_set() or item[2] is not None:
        return

  def get(self, step: int):
    """(batch of `step`, seconds waited)."""
    t0 = time.perf_counter()
    got, batch, error = self._queue.get()
    if error is not None:
      raise error
    if got != step:
      raise RuntimeError(f"prefetcher out of order: wanted step {step}, got {got}")
    return batch, time.perf_counter() - t0

  def close(self):
    self._stop.set()
    self._thread.join(timeout=5)
