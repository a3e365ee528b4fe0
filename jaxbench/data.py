"""Synthetic token batches: the batch of step s is a pure function of (seed, s).

Framework-neutral numpy, so every implementation trains on the same tokens in the same order.
- `markov`: every token has `markov_branching` possible successors drawn once from the seed; a
  sequence walks that table uniformly. A model can learn it: the loss falls from ln(vocab) towards
  ln(branching).
- `uniform`: i.i.d. tokens, for throughput only (nothing to learn).

Batches have shape [microbatches, batch_size // microbatches, seq_len + 1]: inputs are [..., :-1],
targets [..., 1:].
"""

from __future__ import annotations

import numpy as np


class SyntheticData:

  def __init__(self, c):
    self.kind = c.data.synthetic
    self.seed = int(c.seed)
    self.vocab = int(c.model.vocab_size)
    self.shape = (c.microbatches, c.batch_size // c.microbatches, c.seq_len + 1)
    table_rng = np.random.default_rng([self.seed, 0x7A81E])
    self.successors = table_rng.integers(0, self.vocab, size=(self.vocab, c.data.markov_branching),
                                         dtype=np.int32)

  def batch(self, step: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, 1, step])
    rows = self.shape[0] * self.shape[1]
    length = self.shape[2]
    if self.kind == "uniform":
      tokens = rng.integers(0, self.vocab, size=(rows, length), dtype=np.int32)
    else:
      choices = rng.integers(0, self.successors.shape[1], size=(rows, length), dtype=np.int32)
      tokens = np.empty((rows, length), dtype=np.int32)
      tokens[:, 0] = rng.integers(0, self.vocab, size=rows, dtype=np.int32)
      for t in range(1, length):
        tokens[:, t] = self.successors[tokens[:, t - 1], choices[:, t]]
    return tokens.reshape(self.shape)

  def entropy_floor(self) -> float:
    """The lowest loss a model can reach on this data (nats per token)."""
    if self.kind == "uniform":
      return float(np.log(self.vocab))
    # A row with repeated successors has less than ln(branching) nats.
    return float(np.mean([_row_entropy(row) for row in self.successors]))


def _row_entropy(row: np.ndarray) -> float:
  _, counts = np.unique(row, return_counts=True)
  p = counts / counts.sum()
  return float(-(p * np.log(p)).sum())
