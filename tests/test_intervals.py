"""jaxbench.intervals: medians with bootstrap intervals, on synthetic step times."""

import numpy as np
import pytest

from jaxbench import intervals


def step_times(rng, seconds, repeats=3, steps=30, step_noise=0.05, run_noise=0.0):
  """`repeats` runs of `steps` step times around `seconds`: each run's level off by run_noise
  (a slow spell, another process), each step by step_noise (log-normal)."""
  return [list(seconds * np.exp(rng.normal(0, run_noise)) * np.exp(rng.normal(0, step_noise, steps)))
          for _ in range(repeats)]


def test_a_known_ten_percent_difference_is_found():
  rng = np.random.default_rng(1)
  base, slower = step_times(rng, 0.100), step_times(rng, 0.110)
  ratio = intervals.ratio_interval(base, 512, slower, 512)
  assert ratio.low < 1 / 1.1 < ratio.high and ratio.high < 1.0
  assert intervals.distinguishable(ratio) and ratio.repeats == 3 and ratio.steps == 90
  assert intervals.ratio_words(ratio) == "91% (89-94%)"  # seeded: the same every time


@pytest.mark.parametrize("data_seed", [2, 3, 4])
def test_pure_noise_is_not_distinguishable(data_seed):
  rng = np.random.default_rng(data_seed)
  a, b = step_times(rng, 0.100), step_times(rng, 0.100)
  ratio = intervals.ratio_interval(a, 512, b, 512)
  assert ratio.holds(1.0) and not intervals.distinguishable(ratio)
  assert intervals.ratio_words(ratio).startswith("not distinguishable (")


def test_repeats_carry_the_run_to_run_noise():
  # Steady steps within each run, runs 8% apart from one another: the steps of one run say little
  # about the next. Resampled as one long run the two look different; by repeats they do not.
  rng = np.random.default_rng(5)
  a = step_times(rng, 0.100, steps=40, step_noise=0.01, run_noise=0.08)
  b = step_times(rng, 0.100, steps=40, step_noise=0.01, run_noise=0.08)
  by_repeats = intervals.ratio_interval(a, 1, b, 1)
  as_one_run = intervals.ratio_interval([sum(a, [])], 1, [sum(b, [])], 1)
  assert by_repeats.holds(1.0) and not as_one_run.holds(1.0)
  assert by_repeats.high - by_repeats.low > 3 * (as_one_run.high - as_one_run.low)


def test_seeded_deterministic_and_scaled():
  rng = np.random.default_rng(6)
  times = step_times(rng, 0.05, repeats=2, steps=25)
  one = intervals.throughput_interval(times, 1024)
  assert one == intervals.throughput_interval(times, 1024)
  assert one.value == pytest.approx(1024 / np.median(sum(times, [])))
  assert one.low < one.value < one.high
  # The ratio of a run to itself is 1 exactly, its interval about it.
  same = intervals.ratio_interval(times, 1024, times, 2048)
  assert same.value == pytest.approx(2.0) and same.low < 2.0 < same.high


def test_unequal_repeats_and_no_steps():
  rng = np.random.default_rng(7)
  times = [list(0.1 + 0.001 * rng.random(n)) for n in (10, 30, 7)]
  interval = intervals.throughput_interval(times, 1.0)
  assert interval.steps == 47 and 9.8 < interval.low < interval.value < interval.high < 10.0
  assert intervals.throughput_interval([[], [float("nan")]], 1.0) is None
  assert intervals.ratio_interval([[0.1, 0.2]], 1.0, [[]], 1.0) is None
  assert intervals.distinguishable(None) is None


@pytest.mark.parametrize("value, low, high, text", [
    (15.3, 4.0, 60.0, ("20", "0", "60")),  # issue #26's "15.3%" from p10-p90 of 305 ms - 2.3 s
    (50.0, 49.2, 50.9, ("50", "49", "51")),
    (50.03, 49.97, 50.08, ("50.0", "49.9", "50.1")),
    (76.4, 73.2, 80.1, ("76", "73", "81")),
])
def test_figures_are_no_more_precise_than_their_interval(value, low, high, text):
  assert intervals.rounded(value, low, high) == text


def test_a_wide_spread_is_named():
  assert intervals.spread([0.305] * 5 + [2.3] * 5) == pytest.approx(2.3 / 0.305)
  assert intervals.spread_note(7.5) == "noisy: step times p90/p10 7.50x"
  assert intervals.spread_note(1.05) is None and intervals.spread_note(None) is None
  assert intervals.spread([0.1]) is None


def test_count_text():
  interval = intervals.Interval(5444.2, 5312.9, 5581.0, 1, 20)
  assert intervals.count_text(interval) == "5,440 (5,310-5,590)"
  assert intervals.count_text(intervals.Interval(12.34, 11.0, 13.9, 1, 5)) == "12.3 (11-13.9)"
