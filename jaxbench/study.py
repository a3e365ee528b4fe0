"""A study: several sweeps side by side, say the same sweep run on each machine, in one table.

  jaxbench report SWEEP_A SWEEP_B [...] [--baseline=LABEL] [--labels=A,B,...] [--out=DIR]
                  [--loss_tolerance=0.01]

MosaicML's MPT study gave, per model size, tokens/s per GPU on each machine, their ratio, and
loss curves that match. A jaxbench user runs one sweep per machine; this puts them together:
- Points are matched across the sweeps by the values of the keys any of them varied (model
  size, batch, remat, ...; a key a sweep does not vary is read from its points: their overrides,
  else what they ran, e.g. the preset or batch_size in run.json). What sets the sweeps apart
  (the machine, a dtype or XLA_FLAGS fixed per sweep) is not a match key, so it is what the
  ratios measure. A point present in some sweeps only is listed apart, never dropped.
- Per matched point: each sweep's tokens/s per device (the median over the timed steps of every
  run of the point, with its 95% bootstrap interval over runs and steps, jaxbench/intervals.py)
  and MFU; each sweep's ratio to the baseline (the first sweep, or --baseline) with its interval,
  "not distinguishable" where the interval holds 100%; and whether the loss curves agree
  (compare.loss_agreement, first run against first run). compare's comparability warnings
  (a different model, tokens per step, dtype, peaks measured under different conditions, ...)
  are gathered once each, with the points they apply to.
- A headline per sweep against the baseline (and per value of the other keys varied), over the
  model sizes: "B delivers 73-80% of A's per-device throughput across MPT 1b-7b, loss curves within
  1%": the range covers every size's interval, stated no more precisely than they are; then one
  per model size ("B delivers 76% of A's per-device throughput at MPT 1b, ...").
- Plots (--out): the ratio against model size (grouped bars where one size was run), and each
  sweep's throughput against model size, with the intervals as error bars.
The study is printed; --out=DIR also writes study.md, study.json and the PNGs there.

Why `report` and not a command of its own: a study reads what a report reads (results.jsonl and
the run directories), answers the question a report answers across sweeps instead of within one,
and `jaxbench report A B` is what a user who knows `jaxbench report A` tries.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from jaxbench import compare as compare_lib
from jaxbench import intervals
from jaxbench import report as report_lib
from jaxbench import rundir as rundir_lib
from jaxbench import sweep as sweep_lib
from jaxbench.errors import BadInput
from jaxbench.report import CONFIDENCE
from jaxbench.tables import fmt_pct, have_matplotlib, md_cell, md_table, text_table

ABSENT = compare_lib.MISSING


@dataclasses.dataclass
class Side:
  """One sweep of the study."""
  label: str
  path: str
  rows: list  # report.load: every run's result line
  points: list  # report.measure_points: a point's runs together


def load_sides(paths: list[str], labels: list[str] | None = None) -> list[Side]:
  labels = labels or compare_lib.default_labels(paths)
  sides = []
  for path, label in zip(paths, labels):
    rows = report_lib.load(path)
    sides.append(Side(label, path, rows, report_lib.measure_points(rows)))
  return sides


def match_keys(sides: list[Side]) -> list[str]:
  """The keys any sweep varied (in the order they first appear): what a point is matched by."""
  keys = []
  for side in sides:
    keys += [k for k in report_lib.varied_keys(side.rows) if k not in keys]
  return keys


def key_value(point: dict, key: str):
  """A point's value of a match key: its override, else what it ran (run.json's config fields
  in its result line), else ABSENT."""
  overrides = point.get("overrides") or {}
  if key in overrides:
    return overrides[key]
  if key in sweep_lib.CONFIG_FIELDS and point.get(key) is not None:
    return point[key]
  return ABSENT


def match(sides: list[Side], keys: list[str]) -> list[dict]:
  """[{"values": {key: value}, "points": [the point of each side, or None]}], in the order the
  points first appear, the first side's first."""
  matches = {}
  for i, side in enumerate(sides):
    for p in side.points:
      values = {k: key_value(p, k) for k in keys}
      entry = matches.setdefault(repr(sorted(values.items(), key=lambda kv: kv[0])),
                                 {"values": values, "points": [None] * len(sides)})
      if entry["points"][i] is None:  # (two points of one sweep alike: the first)
        entry["points"][i] = p
  return list(matches.values())


# --- Per point ------------------------------------------------------------------------------------
def _side_entry(side: Side, p: dict | None) -> dict:
  if p is None:
    return {"label": side.label, "status": "not in this sweep"}
  status = "ok" if p["ok_runs"] else p.get("status")
  return {"label": side.label, "status": status, "id": p["id"], "runs": len(p["runs"]),
          "ok_runs": p["ok_runs"], "tokens_per_s_per_device": p["tokens_per_s_per_device"],
          "interval": p["throughput"] and p["throughput"].to_json(), "mfu": p["mfu"],
          "step_time_p90_over_p10": p["spread"], "noisy": p["noisy"],
          "cell": report_lib.throughput_cell(p) if p["ok_runs"] else status}


def _named(run: compare_lib.Run | None, label: str):
  return None if run is None else dataclasses.replace(run, label=label)


def _model(p: dict) -> str:
  return report_lib.size_label(p)


def measure(sides: list[Side], matches: list[dict], tolerance: float) -> tuple[list[dict], dict]:
  """The study's rows (one per point on every side, ok or not) and its warnings: text -> the
  models they apply to."""
  base_side = sides[0]
  rows, warnings = [], {}
  for m in matches:
    points = m["points"]
    if any(p is None for p in points):
      continue
    base = points[0]
    any_point = next(p for p in points if p["ok_runs"]) if any(p["ok_runs"] for p in points) else base
    row = {"values": m["values"], "model": _model(any_point), "n_params": any_point.get("n_params"),
           "family": any_point.get("family"), "preset": any_point.get("preset"),
           "batch_size": any_point.get("batch_size"),
           "sides": [_side_entry(s, p) for s, p in zip(sides, points)], "ratios": []}
    for side, p in zip(sides[1:], points[1:]):
      entry = {"label": side.label, "ratio": None, "distinguishable": None, "loss": None}
      if base["ok_runs"] and p["ok_runs"]:
        ratio = report_lib.ratio(base, p)
        entry.update(ratio=ratio and ratio.to_json(), distinguishable=intervals.distinguishable(ratio),
                     cell=report_lib.ratio_cell(base, p))
        a, b = _named(base["first_run"], base_side.label), _named(p["first_run"], side.label)
        if a and b:
          entry["loss"] = compare_lib.loss_agreement(a, b, tolerance)
          for w in compare_lib.comparability_warnings(a, b):
            warnings.setdefault(w, []).append(row["model"])
      else:
        entry["cell"] = "n/a (" + ", ".join(
            f"{s.label}: {e['status']}" for s, e in ((base_side, row["sides"][0]),
                                                      (side, _side_entry(side, p)))
            if e["status"] != "ok") + ")"
      row["ratios"].append(entry)
    rows.append(row)
  return rows, warnings


def one_sided(sides: list[Side], matches: list[dict]) -> list[dict]:
  """The points some sweeps have and others do not: listed, never dropped."""
  out = []
  for m in matches:
    if all(p is not None for p in m["points"]):
      continue
    for side, p in zip(sides, m["points"]):
      if p is not None:
        out.append({"label": side.label, "values": m["values"], "model": _model(p),
                    "batch_size": p.get("batch_size"), "id": p["id"],
                    "missing_from": [s.label for s, q in zip(sides, m["points"]) if q is None],
                    **{k: v for k, v in _side_entry(side, p).items() if k != "label"}})
  return out


# --- Headlines ------------------------------------------------------------------------------------
def _models_text(rows: list[dict]) -> str:
  """"MPT nano-tiny" (family and the first and last preset by size), or the size labels."""
  rows = sorted(rows, key=lambda r: r["n_params"] or 0)
  family = {r["family"] for r in rows}
  if len(family) == 1 and None not in family and all(r["preset"] for r in rows):
    presets = list(dict.fromkeys(r["preset"] for r in rows))
    name = presets[0] if len(presets) == 1 else f"{presets[0]}-{presets[-1]}"
    return f"{rows[0]['family'].upper()} {name}"
  models = list(dict.fromkeys(r["model"] for r in rows))
  return models[0] if len(models) == 1 else f"{models[0]} to {models[-1]}"


def _loss_text(agreements: list[tuple[dict, str]], tolerance: float) -> str:
  tol = compare_lib.fmt_tolerance(tolerance)
  compared = [(a, m) for a, m in agreements if a and a["max_rel_diff"] is not None]
  if not compared:
    notes = sorted({a["note"] for a, _ in agreements if a and a["note"]})
    return "loss curves not compared" + (f" ({'; '.join(notes)})" if notes else "")
  worst, where = max(compared, key=lambda am: am[0]["max_rel_diff"])
  if all(a["matching"] for a, _ in compared) and len(compared) == len(agreements):
    return f"loss curves within {tol} (largest difference {fmt_pct(worst['max_rel_diff'], 2)})"
  bad = [m for a, m in agreements if not (a and a["matching"])]
  return (f"loss curves NOT within {tol} at {', '.join(dict.fromkeys(bad))} (up to "
          f"{fmt_pct(worst['max_rel_diff'], 2)} at {where})")


def headline(label: str, base_label: str, rows: list[dict], index: int, where: str,
             tolerance: float) -> str | None:
  """One sentence for sweep `label` against the baseline over `rows` (one per model size), in the
  form of MosaicML's study; `index` is the sweep's place among the ratios."""
  measured = [(r, intervals.Interval.from_json(r["ratios"][index]["ratio"])) for r in rows]
  measured = [(r, i) for r, i in measured if i is not None]
  if not measured:
    return None
  low, high = min(i.low for _, i in measured), max(i.high for _, i in measured)
  value = sorted(i.value for _, i in measured)[len(measured) // 2]
  if len(measured) == 1:  # one size: its figure and interval, as compare gives them
    figure, bounds = intervals.percent_text(measured[0][1])
    span = f"{figure} ({CONFIDENCE} interval {bounds})"
  else:
    _, lo, hi = intervals.rounded(value * 100, low * 100, high * 100)
    span = f"{lo}%" if lo == hi else f"{lo}-{hi}%"
  models = _models_text([r for r, _ in measured])
  across = f"{'across' if len(measured) > 1 else 'at'} {models}{where}"
  same = [r["model"] for r, i in measured if i.holds(1.0)]
  if len(same) == len(measured):
    text = (f"{label} and {base_label} are not distinguishable in per-device throughput {across} "
            f"({label} at {span} of {base_label}'s)")
  else:
    text = f"{label} delivers {span} of {base_label}'s per-device throughput {across}"
    if same:
      text += f" (not distinguishable at {', '.join(same)})"
  loss = _loss_text([(r["ratios"][index]["loss"], r["model"]) for r, _ in measured], tolerance)
  noisy = [f"{r['model']} on {s['label']} {s['step_time_p90_over_p10']:.2f}x" for r, _ in measured
           for s in (r["sides"][0], r["sides"][index + 1]) if s.get("noisy")]
  return f"{text}, {loss}" + (f"; noisy step times (p90/p10 above {intervals.WIDE_SPREAD}x): "
                              f"{', '.join(noisy)}" if noisy else "")


def headlines(sides: list[Side], rows: list[dict], keys: list[str], tolerance: float) -> list[str]:
  """Per sweep against the baseline, per value of the keys that are not model size: one
  sentence over the sizes, then (where there are several) one per size."""
  series = [k for k in keys if k not in report_lib.SIZE_KEYS]
  out = []
  for index, side in enumerate(sides[1:]):
    groups = {}
    for r in rows:
      groups.setdefault(tuple(repr(r["values"][k]) for k in series), []).append(r)
    for group in groups.values():
      values = group[0]["values"]
      where = (" at " + ", ".join(f"{report_lib.short_key(k)}={values[k]}" for k in series)
               if series else "")
      group = sorted(group, key=lambda r: r["n_params"] or 0)
      lines = [headline(side.label, sides[0].label, group, index, where, tolerance)]
      if sum(r["ratios"][index]["ratio"] is not None for r in group) > 1:
        lines += [headline(side.label, sides[0].label, [r], index, where, tolerance)
                  for r in group]
      out += [line for line in lines if line]
  return out


# --- The study --------------------------------------------------------------------------------------
INTERVAL_RULE = (f"{CONFIDENCE} bootstrap intervals of the medians over every timed step of every "
                 "run of a point (runs drawn first, then their steps: with one run per point, the "
                 "step-to-step noise only); a ratio whose interval holds 100% is not "
                 "distinguishable from parity; a headline's range covers every size's interval")


def study(sides: list[Side], tolerance: float = compare_lib.LOSS_TOLERANCE) -> dict:
  """Everything study.json holds; the text and plots are made from it."""
  keys = match_keys(sides)
  matches = match(sides, keys)
  rows, warnings = measure(sides, matches, tolerance)
  return {"baseline": sides[0].label,
          "sweeps": [{"label": s.label, "path": os.path.abspath(s.path), "points": len(s.points),
                      "runs": len(s.rows)} for s in sides],
          "match_keys": keys, "interval_rule": INTERVAL_RULE, "loss_tolerance": tolerance,
          "headlines": headlines(sides, rows, keys, tolerance),
          "warnings": [f"{w} (at {', '.join(dict.fromkeys(models))})" for w, models in warnings.items()],
          "points": rows, "one_sided": one_sided(sides, matches), "plots": []}


def _key_cells(values: dict, keys: list[str]) -> list[str]:
  return [compare_lib.fmt_value(values[k]) for k in keys if k not in report_lib.SIZE_KEYS]


def table_rows(result: dict) -> list[list[str]]:
  keys = [k for k in result["match_keys"] if k not in report_lib.SIZE_KEYS]
  base = result["baseline"]
  labels = [s["label"] for s in result["sweeps"]]
  head = ["model", *(report_lib.short_key(k) for k in keys)]
  head += [f"{label} tokens/s/device ({CONFIDENCE} interval)" for label in labels]
  head += [f"{label} MFU" for label in labels]
  head += [f"{label} / {base} ({CONFIDENCE} interval)" for label in labels[1:]]
  head += [f"{label} loss vs {base}" for label in labels[1:]]
  out = [head]
  for r in sorted(result["points"], key=lambda r: ([repr(v) for k, v in r["values"].items()
                                                     if k not in report_lib.SIZE_KEYS],
                                                    r["n_params"] or 0)):
    line = [r["model"], *_key_cells(r["values"], result["match_keys"])]
    line += [s["cell"] for s in r["sides"]]
    line += [fmt_pct(s.get("mfu"), 2) if s["status"] == "ok" else "" for s in r["sides"]]
    line += [e["cell"] for e in r["ratios"]]
    line += [_loss_cell(e["loss"]) for e in r["ratios"]]
    out.append(line)
  return out


def _loss_cell(agreement: dict | None) -> str:
  if agreement is None:
    return "n/a"
  if agreement["max_rel_diff"] is None:
    return agreement["note"]
  return (f"{'matching' if agreement['matching'] else 'NOT matching'}: max "
          f"{fmt_pct(agreement['max_rel_diff'], 2)}")


def one_sided_rows(result: dict) -> list[list[str]]:
  keys = [k for k in result["match_keys"] if k not in report_lib.SIZE_KEYS]
  out = [["sweep", "model", *(report_lib.short_key(k) for k in keys), "missing from", "status",
          f"tokens/s/device ({CONFIDENCE} interval)", "MFU", "point"]]
  for o in result["one_sided"]:
    out.append([o["label"], o["model"], *_key_cells(o["values"], result["match_keys"]),
                ", ".join(o["missing_from"]), o["status"], o["cell"] if o["status"] == "ok" else "",
                fmt_pct(o.get("mfu"), 2) if o["status"] == "ok" else "", o["id"]])
  return out


def format_terminal(result: dict) -> str:
  parts = []
  if result["warnings"]:
    parts.append(f"!! {len(result['warnings'])} comparability warning(s), printed on stderr")
  parts += [f"study of {', '.join(s['label'] for s in result['sweeps'])} (baseline "
            f"{result['baseline']}); points matched by "
            + (", ".join(result["match_keys"]) or "nothing: each sweep is one point"), ""]
  if result["points"]:
    parts += [text_table(table_rows(result)), ""]
  else:
    parts += ["no point is in every sweep", ""]
  parts += result["headlines"] + [f"(intervals: {result['interval_rule']})",
                                  f"(loss curves: max relative difference over the common steps "
                                  f"< {compare_lib.fmt_tolerance(result['loss_tolerance'])})"]
  if result["one_sided"]:
    parts += ["", "in some sweeps only:", text_table(one_sided_rows(result))]
  return "\n".join(parts)


def format_markdown(result: dict) -> str:
  parts = ["# jaxbench study", ""]
  if result["warnings"]:
    parts += ["## WARNING: not comparable", ""]
    parts += [f"- **WARNING** {md_cell(w)}" for w in result["warnings"]] + [""]
  parts += ["## Summary", ""] + [f"- {h}" for h in result["headlines"]]
  parts += ["", f"Intervals: {result['interval_rule']}.",
            f"Loss curves: matching when the max relative difference over the common steps is "
            f"< {compare_lib.fmt_tolerance(result['loss_tolerance'])}.", "",
            "Sweeps: " + "; ".join(f"{s['label']} `{s['path']}` ({s['points']} points, {s['runs']} "
                                   "runs)" for s in result["sweeps"]) + ".",
            "Points matched by: " + (", ".join(f"`{k}`" for k in result["match_keys"]) or "nothing")
            + ".", "", "## Points in every sweep", ""]
  parts.append(md_table(table_rows(result)) if result["points"]
               else "None.")
  if result["one_sided"]:
    parts += ["", "## Points in some sweeps only", "",
              md_table(one_sided_rows(result))]
  if result["plots"]:
    parts += ["", "## Plots", ""] + [f"![{p}]({p})" for p in result["plots"]]
  return "\n".join(parts) + "\n"


# --- Plots -------------------------------------------------------------------------------------------
def write_plots(result: dict, sides: list[Side], out: str) -> list[str]:
  rows = result["points"]
  keys = [k for k in result["match_keys"] if k not in report_lib.SIZE_KEYS]
  sizes = {r["n_params"] for r in rows if r["n_params"]}
  written = []

  def ratio_point(r, index):
    ratio = intervals.Interval.from_json(r["ratios"][index]["ratio"])
    return {"ratio": ratio and ratio.scaled(100)}

  def parts(values, *extra):
    return tuple([*extra, *((k, f"{report_lib.short_key(k)}={values[k]}") for k in keys)])

  base = result["baseline"]
  if len(sizes) > 1:
    series = {}
    for r in rows:
      for index, side in enumerate(sides[1:]):
        series.setdefault(parts(r["values"], ("sweep", f"{side.label} / {base}")), []).append(
            (r["n_params"], ratio_point(r, index)))
    if report_lib.plot_lines(series, f"Per-device throughput, % of {base}", "parameters", "ratio",
                             os.path.join(out, "ratio_vs_size.png"), True,
                             lambda n: f"{n / 1e6:.3g}M", reference=100.0):
      written.append("ratio_vs_size.png")
    series = {}
    for side in sides:
      for p in side.points:
        if p["ok_runs"]:
          values = {k: key_value(p, k) for k in keys}
          series.setdefault(parts(values, ("sweep", side.label)), []).append((p.get("n_params"), p))
    if report_lib.plot_lines(series, "Throughput against model size", "parameters", "throughput",
                             os.path.join(out, "throughput_vs_size.png"), True,
                             lambda n: f"{n / 1e6:.3g}M"):
      written.append("throughput_vs_size.png")
  elif rows:
    categories = {}
    for r in rows:
      x = ", ".join([r["model"], *(f"{report_lib.short_key(k)}={r['values'][k]}" for k in keys)])
      for index, side in enumerate(sides[1:]):
        categories.setdefault(x, {})[(("sweep", f"{side.label} / {base}"),)] = ratio_point(r, index)
    if report_lib.plot_bars(categories, f"Per-device throughput, % of {base}", "ratio",
                            os.path.join(out, "ratio_bars.png"), reference=100.0):
      written.append("ratio_bars.png")
  return written


def write_outputs(result: dict, sides: list[Side], out: str) -> None:
  os.makedirs(out, exist_ok=True)
  if have_matplotlib():
    result["plots"] = write_plots(result, sides, out)
  with open(os.path.join(out, "study.md"), "w") as f:
    f.write(format_markdown(result))
  rundir_lib.write_json(os.path.join(out, "study.json"), result)


def _order_sides(paths: list[str], labels: list[str] | None, baseline: str | None) -> tuple:
  labels = labels or compare_lib.default_labels(paths)
  if baseline is not None:
    found = [i for i, (p, label) in enumerate(zip(paths, labels))
             if baseline in (label, p, os.path.normpath(p))]
    if not found:
      raise BadInput(f"--baseline={baseline}: not one of the sweeps' labels ({', '.join(labels)})")
    i = found[0]
    paths, labels = [paths[i], *paths[:i], *paths[i + 1:]], [labels[i], *labels[:i], *labels[i + 1:]]
  return paths, labels


def run(args) -> int:
  """`jaxbench report` with several sweep directories (args from report.parse_args)."""
  labels = None
  if args.labels is not None:
    labels = [s.strip() for s in args.labels.split(",")]
    if len(labels) != len(args.sweep_dirs) or not all(labels) or len(set(labels)) != len(labels):
      raise BadInput(f"--labels needs {len(args.sweep_dirs)} distinct non-empty comma-separated "
                     "names, one per sweep directory")
  paths, labels = _order_sides(args.sweep_dirs, labels, args.baseline)
  sides = load_sides(paths, labels)
  result = study(sides, args.loss_tolerance)
  for w in result["warnings"]:
    print(f"jaxbench report: WARNING: {w}", file=sys.stderr)
  if args.out is not None:
    write_outputs(result, sides, args.out)
  print(format_terminal(result))
  if args.out is not None:
    print(f"\nwrote {', '.join(['study.md', 'study.json', *result['plots']])} to {args.out}")
  return 0
