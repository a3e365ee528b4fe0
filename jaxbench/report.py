"""`jaxbench report`: what a sweep measured, as tables and PNG plots in report.md; with several
sweeps, a study of them side by side (jaxbench/study.py).

  jaxbench report SWEEP_DIR [--out=DIR]
  jaxbench report SWEEP_A SWEEP_B [...] [--baseline=LABEL] [--labels=A,B,...] [--out=DIR]
                  [--loss_tolerance=0.01]

One sweep: reads SWEEP_DIR/results.jsonl (written by `jaxbench sweep`; fields missing there are
read from each point's summary.json) and each point's run directories. A point's figures are over
all its runs (`repeats`): the median tokens/s per device over every timed step of every run, with
its 95% bootstrap interval (over runs and steps; jaxbench/intervals.py), the median MFU, and
"noisy" beside a figure whose run's step times spread wide (p90/p10 above 1.25x).
- The keys the sweep varied other than model size and batch (framework, dtype, remat, XLA_FLAGS,
  ...) are columns side by side, one row per model size and batch: framework x dtype is four
  columns of one row, each with its ratio to the first column (with its interval; "not
  distinguishable" where the interval holds 100%).
- Then per framework / backend / device kind (those of them not varied; and per dtype where the
  points' dtypes differ unvaried, as presets set their own), a table of every point: tokens/s per
  device, MFU, step time, compile time, peak memory and final loss; the max-batch trails; the
  failures with their status and last error line.
- Plots (matplotlib, the `plots` extra; without it report.md has the tables and says so), as the
  axes varied: throughput and MFU against model size where it varied, throughput and peak memory
  against batch where it varied, grouped bars where neither did. Error bars are the intervals;
  throughput, MFU and memory axes start at zero; a legend names only what differs between its
  series (what they share is in the title).
Writes report.md and the PNGs to --out (default SWEEP_DIR).

Several sweeps (say one per machine): a study, printed, and with --out written as study.md,
study.json and plots; see `jaxbench/study.py`. Exit 0, or 2 on bad input.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys

from jaxbench import cli
from jaxbench import compare as compare_lib
from jaxbench import intervals
from jaxbench import rundir as rundir_lib
from jaxbench import sweep as sweep_lib
from jaxbench.errors import BadInput, bad_input
from jaxbench.tables import (figure, finite, fmt_bytes, fmt_count, fmt_pct, fmt_seconds,
                             have_matplotlib, md_table)

# Override keys that set the model's size (plotted on the size axis, not split into series) or
# the batch (the batch axis).
SIZE_KEYS = ("config", "preset", "model.n_layers", "model.d_model", "model.n_heads",
             "model.n_kv_heads", "model.d_ff", "model.vocab_size")
BATCH_KEYS = ("batch_size",)
# Fields of a result line (run.json's config) that set the tables' groups where not varied.
GROUP_FIELDS = ("framework", "backend", "device_kind")
CONFIDENCE = f"{intervals.CONFIDENCE:.0%}"


# --- Reading ---------------------------------------------------------------------------------------
def load(sweep_dir: str) -> list[dict]:
  """The sweep's result lines (every run of every point) in point order, with summary fields
  filled from the run dirs, `run_path` (the run directory) and `group`."""
  if not os.path.isfile(os.path.join(sweep_dir, "results.jsonl")):
    raise BadInput(f"{sweep_dir}: no results.jsonl (is it the --out of a `jaxbench sweep`?)")
  rows = sorted(sweep_lib.read_results(sweep_dir).values(),
                key=lambda r: (r.get("index", 0), r.get("repeat") or 1))
  if not rows:
    raise BadInput(f"{sweep_dir}/results.jsonl has no results yet")
  for r in rows:
    r["run_path"] = os.path.join(sweep_dir, r.get("run_dir") or "")
    if r.get("status") == "ok":
      try:
        summary = rundir_lib.read_json(os.path.join(r["run_path"], "summary.json"))
      except (OSError, ValueError):
        summary = {}
      for k in (*sweep_lib.SUMMARY_FIELDS, "peak_memory_source", "peak_source"):
        if r.get(k) is None:
          r[k] = summary.get(k)
  # What is varied is a column of the tables, not a group of its own (framework x dtype: one row).
  varied = set(varied_keys(rows))
  for r in rows:
    r["group"] = " / ".join(str(r.get(k) or "?") for k in GROUP_FIELDS if k not in varied)
  # Presets set their own dtype (mpt.py:small float32, :125m bfloat16): where the points' dtypes
  # differ without the sweep varying dtype, each dtype is a group of its own, so no table or curve
  # mixes their MFU.
  if "dtype" not in varied and len({r.get("dtype") for r in rows if r.get("status") == "ok"}) > 1:
    for r in rows:
      r["group"] += f" / {r.get('dtype') or '?'}"
  return rows


def varied_keys(rows: list[dict]) -> list[str]:
  """Override keys whose value is not the same in every point (what the sweep varied)."""
  keys = []
  for r in rows:
    keys += [k for k in r.get("overrides", {}) if k not in keys and k != "timeout_s"]
  return [k for k in keys
          if len({repr(r.get("overrides", {}).get(k)) for r in rows}) > 1]


def other_keys(rows: list[dict]) -> list[str]:
  return [k for k in varied_keys(rows) if k not in SIZE_KEYS + BATCH_KEYS]


def _value(r: dict, key: str):
  return r.get("overrides", {}).get(key, "")


def _load_run(r: dict) -> compare_lib.Run | None:
  try:
    return compare_lib.load_run(r["run_path"], r["id"])
  except compare_lib.BadInput:  # a run directory without its files: figures from results.jsonl
    return None


def measure_points(rows: list[dict]) -> list[dict]:
  """One entry per point, its runs (repeats) together: the first finished run's result line,
  and `runs` (every line), `ok_runs`, `step_times` (each finished run's timed steps),
  `work_per_step`, `throughput` (intervals.Interval of tokens/s per device, None without step
  times), `tokens_per_s_per_device`, `mfu` (the median over its runs), `spread` (the widest
  p90/p10 of its runs) and `noisy`, `first_run` (compare.Run, for loss curves; None without)."""
  by_id = {}
  for r in rows:
    by_id.setdefault(r["id"], []).append(r)
  points = []
  for runs in by_id.values():
    ok = [r for r in runs if r.get("status") == "ok"]
    loaded = [run for run in map(_load_run, ok) if run is not None]
    times = [t for t in map(compare_lib.timed_step_times, loaded) if t]
    work = compare_lib.work_per_step(loaded[0]) if loaded else None
    interval = intervals.throughput_interval(times, work) if work and times else None
    spreads = [s for s in map(intervals.spread, times) if s is not None]
    mfus = [r["mfu_median"] for r in ok if finite(r.get("mfu_median"))]
    tps = [r["tokens_per_s_per_device_median"] for r in ok
           if finite(r.get("tokens_per_s_per_device_median"))]
    point = dict(ok[0] if ok else runs[0])
    point.update(
        runs=runs, ok_runs=len(ok), step_times=times, work_per_step=work, throughput=interval,
        tokens_per_s_per_device=interval.value if interval else (statistics.median(tps) if tps else None),
        mfu=statistics.median(mfus) if mfus else None, spread=max(spreads) if spreads else None,
        first_run=loaded[0] if loaded else None)
    point["noisy"] = intervals.spread_note(point["spread"])
    if times:  # the median over every run's timed steps, as the throughput's
      point["step_time_s_median"] = statistics.median(t for run in times for t in run)
    points.append(point)
  return points


def ratio(base: dict, point: dict) -> intervals.Interval | None:
  """point's tokens/s per device over base's, with its interval (None without step times)."""
  if not (base["step_times"] and point["step_times"] and base["work_per_step"]
          and point["work_per_step"]):
    return None
  return intervals.ratio_interval(base["step_times"], base["work_per_step"], point["step_times"],
                                  point["work_per_step"])


# --- Words and cells -----------------------------------------------------------------------------
def size_label(r: dict) -> str:
  """The model: family:preset and its size (a preset's size can be overridden, e.g. d_model)."""
  name = f"{r.get('family') or ''}:{r.get('preset') or _value(r, 'preset') or '?'}".lstrip(":")
  n = r.get("n_params")
  return f"{name} ({n / 1e6:.3g}M)" if finite(n) else name


def short_key(key: str) -> str:
  return key[len("env."):] if key.startswith("env.") else key.split(".")[-1]


def combo_label(values: dict) -> str:
  return ", ".join(f"{short_key(k)}={v}" for k, v in values.items())


def throughput_cell(p: dict) -> str:
  """"5,440 (5,310-5,590)", "noisy" beside it where its step times spread wide, and how many of
  its runs finished where some did not."""
  text = (intervals.count_text(p["throughput"]) if p["throughput"]
          else fmt_count(p["tokens_per_s_per_device"]))
  if p["ok_runs"] < len(p["runs"]):
    text += f" ({p['ok_runs']}/{len(p['runs'])} runs finished)"
  return text + (f" ({p['noisy']})" if p["noisy"] else "")


def ratio_cell(base: dict, p: dict) -> str:
  r = ratio(base, p)
  if r is not None:
    return intervals.ratio_words(r)
  mine, theirs = p["tokens_per_s_per_device"], base["tokens_per_s_per_device"]
  return fmt_pct(mine / theirs) if finite(mine) and finite(theirs) and theirs else "unknown"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
  return md_table([head, *rows]).splitlines()


def _order(p: dict, keys: list[str]) -> tuple:
  return (p.get("n_params") or 0, p.get("batch_size") or 0, [repr(_value(p, k)) for k in keys])


# --- Tables ----------------------------------------------------------------------------------------
def side_by_side(points: list[dict]) -> list[str]:
  """The keys varied other than model size and batch as columns, one row per group, model size
  and batch: tokens/s per device with its interval and the ratio to the first column, then MFU."""
  rows = [p for p in points if p["ok_runs"]]
  keys = other_keys([r for p in points for r in p["runs"]])
  if not keys or not rows:
    return []
  columns = list(dict.fromkeys(tuple(_value(p, k) for k in keys) for p in points))
  lines_by_row = {}
  for p in sorted(rows, key=lambda p: _order(p, [])):
    row_key = (p["group"], size_label(p), p.get("batch_size"))
    lines_by_row.setdefault(row_key, {})[tuple(_value(p, k) for k in keys)] = p
  heads = [combo_label(dict(zip(keys, c))) for c in columns]
  # A column with no finished point: what became of its points (the failures table says why).
  failed = {}
  for p in points:
    if not p["ok_runs"]:
      failed.setdefault(tuple(_value(p, k) for k in keys), []).append(p.get("status") or "?")
  finished = {c for cells in lines_by_row.values() for c in cells}
  missing = {c: (", ".join(dict.fromkeys(failed[c])) if c in failed and c not in finished
                 else "no result") for c in columns}
  throughput, mfu = [], []
  for (group, size, batch), cells in lines_by_row.items():
    base = cells.get(columns[0])
    line = []
    for c in columns:
      p = cells.get(c)
      if p is None:
        line.append(missing[c])
      elif base is None or p is base:
        line.append(throughput_cell(p))
      else:
        line.append(f"{throughput_cell(p)}; {ratio_cell(base, p)}")
    first = [group, size, str(batch or "?")]
    throughput.append(first + line)
    mfu.append(first + [fmt_pct(cells[c]["mfu"], 2) if c in cells else missing[c] for c in columns])
  lead = ["group", "model", "batch"]
  return (["", f"### Side by side: tokens/s per device ({CONFIDENCE} interval); ratio to "
               f"{heads[0]} ({CONFIDENCE} interval)", ""]
          + _table(lead + heads, throughput)
          + ["", "### Side by side: MFU (median over runs)", ""] + _table(lead + heads, mfu))


def results_tables(rows: list[dict], points: list[dict] | None = None) -> list[str]:
  points = measure_points(rows) if points is None else points
  ok = [p for p in points if p["ok_runs"]]
  keys = other_keys(rows)
  repeats = max((p.get("repeat") or 1 for p in rows), default=1) > 1
  lines = []
  for group in dict.fromkeys(p["group"] for p in ok):
    members = sorted((p for p in ok if p["group"] == group), key=lambda p: _order(p, keys))
    head = ["model", "batch", *keys, *(["runs"] if repeats else []),
            f"tokens/s/device ({CONFIDENCE} interval)", "MFU", "step time", "compile",
            "peak memory/device", "final loss"]
    table = []
    for p in members:
      batch = str(p.get("batch_size") or "?")
      if (p.get("max_batch") or {}).get("batch_size"):
        batch += " (max)"
      loss = p.get("final_loss")
      table.append([size_label(p), batch, *(str(_value(p, k)) for k in keys),
                    *([f"{p['ok_runs']}/{len(p['runs'])} ok"] if repeats else []),
                    throughput_cell(p), fmt_pct(p["mfu"]), fmt_seconds(p.get("step_time_s_median")),
                    fmt_seconds(p.get("compile_s")), fmt_bytes(p.get("peak_memory_bytes_per_device")),
                    f"{loss:.4f}" if isinstance(loss, (int, float)) else "unknown"])
    n_dev = {p.get("n_devices") for p in members}
    lines += ["", f"### {group or 'all points'} ({', '.join(str(n) for n in sorted(n_dev, key=str))} "
                  "device(s))", ""]
    lines += _table(head, table)
  searched = [r for r in rows if r.get("max_batch") and (r.get("repeat") or 1) == 1]
  if searched:
    lines += ["", "### Largest batch that fits (--max_batch)", ""]
    table = []
    for r in searched:
      s = r["max_batch"]
      trail = ", ".join(f"{t['batch_size']}: {t['status']}" for t in s.get("trail", []))
      table.append([r["id"], str(s.get("batch_size") or "none"), str(s.get("unit")), trail])
    lines += _table(["point", "largest batch", "unit", "trail (batch: status)"], table)
  return lines


def failures_table(rows: list[dict]) -> list[str]:
  failed = [r for r in rows if r.get("status") != "ok"]
  if not failed:
    return []
  keys = varied_keys(rows)
  table = []
  for r in failed:
    last = (r.get("error") or "").splitlines()
    run = f" (run {r['repeat']})" if (r.get("repeat") or 1) > 1 else ""
    table.append([r["id"] + run, *(str(_value(r, k)) for k in keys), r.get("status", "?"),
                  r.get("reason", ""), (last[-1] if last else "")[:240]])
  return ["", "## Failures", ""] + _table(["point", *keys, "status", "why", "last error line"],
                                          table)


# --- Plots ---------------------------------------------------------------------------------------
def legend_labels(parts: list[dict]) -> tuple[list[str], str]:
  """Each series' name from its named parts, leaving out the parts every series shares: those
  go in the title once (the second value), not into every legend entry."""
  names = list(dict.fromkeys(k for p in parts for k in p))
  shared = [k for k in names if len({p.get(k) for p in parts}) == 1]
  labels = [", ".join(str(p[k]) for k in names if k not in shared and p.get(k)) or "all points"
            for p in parts]
  return labels, ", ".join(str(parts[0][k]) for k in shared if parts and parts[0].get(k))


def _y(p: dict, metric: str):
  """(value, low, high) of a point's metric for a plot; low/high None without an interval."""
  if metric == "throughput":
    i = p["throughput"]
    return (i.value, i.low, i.high) if i else (p["tokens_per_s_per_device"], None, None)
  if metric == "ratio":  # a study's ratio to its baseline, in percent
    i = p["ratio"]
    return (i.value, i.low, i.high) if i else (None, None, None)
  if metric == "mfu":
    return (p["mfu"] * 100 if finite(p["mfu"]) else None), None, None
  b = p.get("peak_memory_bytes_per_device")
  return (b / 2**30 if finite(b) else None), None, None


METRICS = {"throughput": "tokens/s per device (median)", "mfu": "MFU (%)",
           "memory": "peak memory per device (GiB)", "ratio": "% of the baseline's tokens/s per device"}


def _errorbars(ax, xs, ys, lows, highs, **style):
  if all(lo is not None for lo in lows):
    yerr = [[y - lo for y, lo in zip(ys, lows)], [hi - y for y, hi in zip(ys, highs)]]
    return ax.errorbar(xs, ys, yerr=yerr, capsize=3, **style)
  return ax.plot(xs, ys, **style)


def plot_lines(series: dict, title: str, x_label: str, metric: str, path: str, log_x: bool,
               tick=lambda x: f"{x:g}", reference: float | None = None) -> bool:
  """series: tuple of parts -> [(x, point)]. One line per series, error bars where the metric
  has an interval, y from zero; `reference`: a dashed line at that y (a ratio's parity)."""
  series = {k: sorted((x, p) for x, p in v if finite(x) and _y(p, metric)[0] is not None)
            for k, v in series.items()}
  series = {k: v for k, v in series.items() if v}
  if not series:
    return False
  labels, shared = legend_labels([dict(k) for k in series])
  fig, (ax,) = figure()
  for i, (label, points) in enumerate(zip(labels, series.values())):
    values = [_y(p, metric) for _, p in points]
    _errorbars(ax, [x for x, _ in points], [v[0] for v in values], [v[1] for v in values],
               [v[2] for v in values], marker="o", color=f"C{i % 10}", label=label)
  if log_x:
    ax.set_xscale("log")
    ax.minorticks_off()
  xs = sorted({x for points in series.values() for x, _ in points})
  ax.set_xticks(xs, [tick(x) for x in xs])
  if reference is not None:
    ax.axhline(reference, color="gray", linestyle="--", linewidth=1)
  ax.set_ylim(bottom=0)
  ax.set(xlabel=x_label, ylabel=METRICS[metric], title=title + (f"\n{shared}" if shared else ""))
  ax.grid(True, alpha=0.3)
  if len(series) > 1:
    ax.legend(fontsize="small")
  fig.savefig(path, dpi=100)
  return True


def plot_bars(categories: dict, title: str, metric: str, path: str, x_label: str = "",
              reference: float | None = None) -> bool:
  """categories: x label -> {bar parts (tuple): point}: grouped bars, error bars where the
  metric has an interval, y from zero."""
  bars = list(dict.fromkeys(b for group in categories.values() for b in group))
  if not bars or all(_y(p, metric)[0] is None for g in categories.values() for p in g.values()):
    return False
  labels, shared = legend_labels([dict(b) for b in bars])
  fig, (ax,) = figure()
  width = 0.8 / len(bars)
  for j, (bar, label) in enumerate(zip(bars, labels)):
    xs, ys, lows, highs = [], [], [], []
    for i, group in enumerate(categories.values()):
      p = group.get(bar)
      y = _y(p, metric) if p else (None, None, None)
      if y[0] is not None:
        xs.append(i - 0.4 + width * (j + 0.5))
        ys.append(y[0])
        lows.append(y[1])
        highs.append(y[2])
    if not xs:
      continue
    yerr = ([[y - lo for y, lo in zip(ys, lows)], [hi - y for y, hi in zip(ys, highs)]]
            if all(lo is not None for lo in lows) else None)
    ax.bar(xs, ys, width=width, yerr=yerr, capsize=3, color=f"C{j % 10}",
           label=label if len(bars) > 1 else None)
  ax.set_xticks(range(len(categories)), list(categories))
  if reference is not None:
    ax.axhline(reference, color="gray", linestyle="--", linewidth=1)
  ax.set_ylim(bottom=0)
  ax.set(xlabel=x_label, ylabel=METRICS[metric], title=title + (f"\n{shared}" if shared else ""))
  ax.grid(True, axis="y", alpha=0.3)
  if len(bars) > 1:
    ax.legend(fontsize="small")
  fig.savefig(path, dpi=100)
  return True


def _parts(p: dict, keys: list[str], groups: int, *extra: tuple[str, str]) -> tuple:
  """A point's series name, as (name, text) pairs: its group (where there are several), the
  varied keys' values, and `extra`."""
  parts = [("group", p["group"])] if groups > 1 else []
  parts += [(k, f"{short_key(k)}={_value(p, k)}") for k in keys]
  return tuple(parts + list(extra))


def write_plots(rows: list[dict], out: str, points: list[dict] | None = None) -> dict[str, str]:
  """The plots that make sense for the axes varied: file name -> caption."""
  points = measure_points(rows) if points is None else points
  ok = [p for p in points if p["ok_runs"]]
  keys = other_keys(rows)
  groups = len({p["group"] for p in ok})
  sizes = {p.get("n_params") for p in ok if finite(p.get("n_params"))}
  batches = {p.get("batch_size") for p in ok if finite(p.get("batch_size"))}
  written = {}

  def lines(x_field, extra, name, title, x_label, metric, tick):
    series = {}
    for p in ok:
      series.setdefault(_parts(p, keys, groups, *extra(p)), []).append((p.get(x_field), p))
    if plot_lines(series, title, x_label, metric, os.path.join(out, name), True, tick):
      written[name] = title

  if len(sizes) > 1:
    by_batch = (lambda p: [("batch", f"batch {p.get('batch_size')}")]) if len(batches) > 1 else (
        lambda p: [])
    for metric, name, title in (("throughput", "throughput_vs_size.png", "Throughput against model size"),
                                ("mfu", "mfu_vs_size.png", "MFU against model size")):
      lines("n_params", by_batch, name, title, "parameters", metric, lambda n: f"{n / 1e6:.3g}M")
  if len(batches) > 1:
    by_size = (lambda p: [("model", size_label(p))]) if len(sizes) > 1 else (lambda p: [])
    for metric, name, title in (("throughput", "throughput_vs_batch.png", "Throughput against batch"),
                                ("memory", "memory_vs_batch.png", "Peak memory against batch")):
      lines("batch_size", by_size, name, title, "global batch (sequences)", metric, lambda b: f"{b:g}")
  if len(sizes) <= 1 and len(batches) <= 1 and ok:
    # No numeric axis varied: grouped bars, one group per value of the first key varied (or
    # per point), one bar per value of the others.
    categories = {}
    for p in sorted(ok, key=lambda p: p.get("index", 0)):  # the sweep's own order of values
      x = (f"{short_key(keys[0])}={_value(p, keys[0])}" if keys else
           f"{p['group']}, {size_label(p)}, batch {p.get('batch_size')}")
      bar = _parts(p, keys[1:], groups) or (("all", ""),)
      categories.setdefault(x, {})[bar] = p
    for metric, name, title in (("throughput", "throughput_bars.png", "Throughput"),
                                ("mfu", "mfu_bars.png", "MFU"),
                                ("memory", "memory_bars.png", "Peak memory")):
      shared = f"{size_label(ok[0])}, batch {ok[0].get('batch_size')}"
      if plot_bars(categories, f"{title} ({shared})", metric, os.path.join(out, name)):
        written[name] = title
  return written


# --- report.md -----------------------------------------------------------------------------------
def format_report(sweep_dir: str, rows: list[dict], plots: dict[str, str] | None,
                  out: str, points: list[dict] | None = None) -> str:
  points = measure_points(rows) if points is None else points
  counts = {}
  for r in rows:
    counts[r.get("status", "?")] = counts.get(r.get("status", "?"), 0) + 1
  runs = "" if len(rows) == len(points) else f" ({len(rows)} runs)"
  lines = [f"# Sweep report: {os.path.abspath(sweep_dir)}", "",
           f"{len(points)} points{runs}: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".",
           "Throughput is the median tokens/s per device over the timed steps (of every run of a "
           f"point), with its {CONFIDENCE} bootstrap interval (over runs, then steps; with one run, "
           "the step-to-step noise only); ratios whose interval holds 100% are not "
           "distinguishable. MFU against the peak each run names in its run.json."]
  keys = varied_keys(rows)
  if keys:
    lines.append("Varied: " + ", ".join(f"`{k}`" for k in keys) + ".")
  for field, what in (("peak_source", "MFU peak"), ("peak_memory_source", "Peak memory")):
    sources = sorted({str(r[field]) for r in rows if r.get(field)})
    if sources:
      lines.append(f"{what}: " + "; ".join(sources) + ".")
  lines += ["", "## Results"] + side_by_side(points) + results_tables(rows, points)
  lines += failures_table(rows)
  lines += ["", "## Plots", ""]
  if plots is None:
    lines.append("No plots: matplotlib is not installed (`pip install 'jaxbench[plots]'`); the "
                 "tables above have every number.")
  elif not plots:
    lines.append("No plots: no point finished with numbers to plot.")
  else:
    lines += [f"![{caption}]({name})" for name, caption in plots.items()]
  rel = os.path.relpath(os.path.abspath(sweep_dir), os.path.abspath(out))
  lines += ["", f"Per point: `{rel}/points/<id>/run` (run directory: compare two with "
                f"`jaxbench compare`), `{rel}/points/<id>/log.txt` (its output); with repeats, "
                "`run-2`, `log-2.txt`, ..."]
  return "\n".join(lines) + "\n"


def report(sweep_dir: str, out: str | None = None) -> tuple[str, dict | None]:
  out = out or sweep_dir
  rows = load(sweep_dir)
  points = measure_points(rows)
  os.makedirs(out, exist_ok=True)
  plots = write_plots(rows, out, points) if have_matplotlib() else None
  path = os.path.join(out, "report.md")
  with open(path, "w") as f:
    f.write(format_report(sweep_dir, rows, plots, out, points))
  return path, plots


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = cli.FlagParser(prog=argv[0] if argv else "jaxbench report", add_help=False)
  parser.add_argument("sweep_dirs", nargs="+")
  parser.add_argument("--out", default=None)
  parser.add_argument("--baseline", default=None)
  parser.add_argument("--labels", default=None)
  parser.add_argument("--loss_tolerance", type=float, default=compare_lib.LOSS_TOLERANCE)
  args = parser.parse_args(argv[1:])
  if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
    raise BadInput(f"--out={args.out} exists and is not a directory")
  if len(args.sweep_dirs) == 1 and (args.baseline or args.labels):
    raise BadInput("--baseline and --labels are for a study of several sweeps; one was given")
  if not (math.isfinite(args.loss_tolerance) and args.loss_tolerance > 0):
    raise BadInput(f"--loss_tolerance must be a positive number, got {args.loss_tolerance}")
  return args


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  if cli.asks_for_help(argv):
    print(__doc__.strip())
    return 0
  try:
    args = parse_args(argv)
    if len(args.sweep_dirs) > 1:
      from jaxbench import study
      return study.run(args)
    path, plots = report(args.sweep_dirs[0], args.out)
  except BadInput as e:
    return bad_input("jaxbench report", e)
  if plots is None:
    print("jaxbench report: matplotlib is not installed: tables only "
          "(pip install 'jaxbench[plots]' for the plots)", file=sys.stderr)
  with open(path) as f:
    print(f.read().split("\n## Plots")[0])
  print(f"wrote {path}" + (f" and {', '.join(plots)}" if plots else ""))
  return 0


if __name__ == "__main__":
  sys.exit(main())
