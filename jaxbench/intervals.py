"""How surely a throughput, or a ratio of two, was measured: medians with bootstrap intervals.

A run's throughput is tokens per step / the median step time / devices. Its interval comes from
the bootstrap: the timed step times resampled with replacement, RESAMPLES times, the median taken
each time, and the middle CONFIDENCE of those medians kept. Where a point ran several times
(`repeats` in a sweep), the resampling is in two stages: the repeats first, then the steps of each
repeat drawn, so that the interval holds the differences between runs (a slow spell, another
compile's layout) and not only those between the steps of one run. With one repeat it holds the
step-to-step noise only: a second run of the same point may land outside it.

A ratio's interval is that of the two throughputs resampled apart (the runs are not paired step by
step); two figures are "not distinguishable" when it holds 1.0. The generator is seeded, so the
same step times give the same interval every time. Pure numpy, no JAX.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000
MIN_RESAMPLES = 400
SEED = 0
# p90/p10 of a run's step times above which its figure is called noisy next to it: a quiet GPU
# gives 1.01-1.05, a CPU shared with other jobs 1.2 to 7.5 (issue #26's 305 ms - 2.3 s).
WIDE_SPREAD = 1.25
# Step times drawn in all (resamples x steps; 2000 resamples up to 3,000 timed steps), and at once
# (the memory of one chunk of draws).
_WORK = 6_000_000
_CHUNK_FLOATS = 2_000_000


@dataclasses.dataclass(frozen=True)
class Interval:
  value: float  # the estimate: the median over every timed step of every repeat
  low: float
  high: float
  repeats: int  # runs the samples came from
  steps: int  # timed steps, all repeats together

  def holds(self, x: float) -> bool:
    return self.low <= x <= self.high

  def scaled(self, factor: float) -> "Interval":
    return dataclasses.replace(self, value=self.value * factor, low=self.low * factor,
                               high=self.high * factor)

  def to_json(self) -> dict:
    return {**dataclasses.asdict(self), "confidence": CONFIDENCE}

  @classmethod
  def from_json(cls, obj: dict | None) -> "Interval | None":
    return None if obj is None else cls(*(obj[f.name] for f in dataclasses.fields(cls)))


def _clean(repeats: list[list[float]]) -> list[np.ndarray]:
  out = [np.asarray([t for t in r if isinstance(t, (int, float)) and math.isfinite(t) and t > 0],
                    dtype=np.float64) for r in repeats]
  return [r for r in out if r.size]


def resamples_for(steps: int) -> int:
  """RESAMPLES, fewer for long runs (bounding the work to _WORK draws of a step time; no fewer
  than MIN_RESAMPLES, enough for the tails of a 95% interval)."""
  return int(min(RESAMPLES, max(MIN_RESAMPLES, _WORK // max(steps, 1))))


def _median_rows(values: np.ndarray) -> np.ndarray:
  """np.median along axis 1, partitioning `values` in place (it is ours: no copy of it)."""
  n = values.shape[1]
  kth = [n // 2] if n % 2 else [n // 2 - 1, n // 2]
  values.partition(kth, axis=1)
  return values[:, kth].mean(axis=1)


def bootstrap_medians(repeats: list[list[float]], rng: np.random.Generator,
                      resamples: int | None = None) -> np.ndarray:
  """Medians of the step times, each over the repeats drawn with replacement and, in each repeat
  drawn, its steps drawn with replacement (as many as it has)."""
  runs = _clean(repeats)
  if not runs:
    raise ValueError("no step times")
  lengths = np.array([r.size for r in runs])
  longest = int(lengths.max())
  resamples = resamples or resamples_for(int(lengths.sum()))
  padded = np.full((len(runs), longest), np.nan)
  for i, r in enumerate(runs):
    padded[i, :r.size] = r
  flat = padded.ravel()
  chunk = max(1, _CHUNK_FLOATS // (len(runs) * longest))
  medians = []
  for start in range(0, resamples, chunk):
    n = min(chunk, resamples - start)
    which = rng.integers(0, len(runs), size=(n, len(runs)))  # the repeats drawn
    if lengths.min() == longest:  # repeats of one length (the usual case)
      picks = rng.integers(0, longest, size=(n, len(runs), longest))
      medians.append(_median_rows(flat[(which[..., None] * longest + picks).reshape(n, -1)]))
      continue
    # Each drawn repeat's steps: `longest` draws, the ones past its own length left out (NaN), so
    # a repeat contributes as many steps as it has.
    drawn = lengths[which][..., None]
    picks = np.floor(rng.random((n, len(runs), longest)) * drawn).astype(int)
    values = flat[which[..., None] * longest + picks]
    values[np.arange(longest)[None, None, :] >= drawn] = np.nan
    medians.append(np.nanmedian(values.reshape(n, -1), axis=1))
  return np.concatenate(medians)


def _bounds(samples: np.ndarray) -> tuple[float, float]:
  tail = (1 - CONFIDENCE) / 2 * 100
  low, high = np.percentile(samples, [tail, 100 - tail])
  return float(low), float(high)


def throughput_interval(repeats: list[list[float]], work_per_step: float,
                        seed: int = SEED) -> Interval | None:
  """work_per_step / the median step time (tokens/s per device, with work_per_step the tokens a
  device processes in a step), with its interval; None without step times."""
  runs = _clean(repeats)
  if not runs:
    return None
  medians = bootstrap_medians(runs, np.random.default_rng(seed))
  low, high = _bounds(work_per_step / medians)
  value = work_per_step / float(np.median(np.concatenate(runs)))
  return Interval(value, low, high, repeats=len(runs), steps=sum(r.size for r in runs))


def ratio_interval(base: list[list[float]], base_work: float, other: list[list[float]],
                   other_work: float, seed: int = SEED) -> Interval | None:
  """other's throughput / base's (each work_per_step / median step time), with its interval: the
  two resampled apart. None where either has no step times."""
  base_runs, other_runs = _clean(base), _clean(other)
  if not base_runs or not other_runs:
    return None
  rng = np.random.default_rng(seed)
  base_medians = bootstrap_medians(base_runs, rng)
  other_medians = bootstrap_medians(other_runs, rng)
  ratios = (other_work / other_medians) / (base_work / base_medians)
  low, high = _bounds(ratios)
  value = ((other_work / float(np.median(np.concatenate(other_runs))))
           / (base_work / float(np.median(np.concatenate(base_runs)))))
  return Interval(value, low, high, repeats=len(other_runs),
                  steps=sum(r.size for r in other_runs))


def distinguishable(ratio: Interval | None) -> bool | None:
  """Whether a ratio's interval leaves out 1.0 (None: no interval)."""
  return None if ratio is None else not ratio.holds(1.0)


def spread(step_times: list[float]) -> float | None:
  """p90 / p10 of a run's step times (None with fewer than two)."""
  runs = _clean([step_times])
  if not runs or runs[0].size < 2:
    return None
  p10, p90 = np.percentile(runs[0], [10, 90])
  return float(p90 / p10)


def spread_note(ratio_p90_p10: float | None) -> str | None:
  """The words put next to a figure whose run's step times spread wide, else None."""
  if ratio_p90_p10 is None or ratio_p90_p10 <= WIDE_SPREAD:
    return None
  return f"noisy: step times p90/p10 {ratio_p90_p10:.2f}x"


# --- Words ---------------------------------------------------------------------------------------
def _step(width: float) -> float:
  """The rounding step for figures known to `width` (the interval's width, in the figures' unit):
  the power of ten at or below it, between 0.1 and 10 units."""
  if not width > 0:
    return 0.1
  return min(10.0, max(0.1, 10 ** math.floor(math.log10(width))))


def _digits(step: float) -> int:
  return max(0, -int(math.floor(math.log10(step) + 1e-9)))


def rounded(value: float, low: float, high: float) -> tuple[str, str, str]:
  """value, low and high (same unit) as text no more precise than the interval: rounded to the
  power of ten of its width, the bounds outwards."""
  step = _step(high - low)
  digits = _digits(step)

  def text(x):
    return f"{x:.{digits}f}"

  return (text(round(value / step) * step), text(math.floor(low / step + 1e-9) * step),
          text(math.ceil(high / step - 1e-9) * step))


def percent_text(ratio: Interval) -> tuple[str, str]:
  """("50%", "49-51%"): a ratio and its interval in percent, as precise as the interval allows."""
  value, low, high = rounded(ratio.value * 100, ratio.low * 100, ratio.high * 100)
  return f"{value}%", f"{low}-{high}%"


def count_text(interval: Interval) -> str:
  """"5,444 (5,300-5,600)": a throughput with its interval, the interval no more precise than it
  is (three significant figures of its width)."""
  width = interval.high - interval.low
  step = 10 ** max(0, math.floor(math.log10(width)) - 1) if width > 0 else 1

  def text(x, how=round):
    x = how(x / step) * step
    return f"{x:,.0f}" if abs(x) >= 100 or step >= 1 else f"{x:.3g}"

  if interval.value < 100:  # slow runs: significant figures, not thousands
    return f"{interval.value:.3g} ({interval.low:.3g}-{interval.high:.3g})"
  return f"{text(interval.value)} ({text(interval.low, math.floor)}-{text(interval.high, math.ceil)})"


def ratio_words(ratio: Interval) -> str:
  """The cell of a ratio: "50% (49-51%)", or "not distinguishable (93-108%)" when it holds 1.0."""
  value, bounds = percent_text(ratio)
  if ratio.holds(1.0):
    return f"not distinguishable ({bounds})"
  return f"{value} ({bounds})"
