"""`jaxbench report`: what a sweep measured, as tables and PNG plots in report.md.

  jaxbench report SWEEP_DIR [--out=DIR]

Reads SWEEP_DIR/results.jsonl (written by `jaxbench sweep`; fields missing there are read from
each point's summary.json). The points that ran are grouped per framework, backend and device
kind; in each group a table gives tokens/s per device, MFU, step time, compile time and peak memory
against model size (parameters) and global batch, split by every other key the sweep varied
(remat, attention, XLA_FLAGS, ...). The points that failed are listed with their status and last
error line. Plots (matplotlib, the `plots` extra; without it report.md has the tables and says
so): throughput and MFU against model size, throughput and peak memory against batch. Writes
report.md and the PNGs to --out (default SWEEP_DIR). Exit 0, or 2 on bad input.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys

from jaxbench import cli
from jaxbench import rundir as rundir_lib
from jaxbench import sweep as sweep_lib
from jaxbench.compare import fmt_bytes, fmt_count, fmt_pct, fmt_seconds

# Override keys that set the model's size (plotted on the size axis, not split into series) or
# the batch (the batch axis).
SIZE_KEYS = ("config", "preset", "model.n_layers", "model.d_model", "model.n_heads",
             "model.n_kv_heads", "model.d_ff", "model.vocab_size")
BATCH_KEYS = ("batch_size",)
PLOTS = ("throughput_vs_size.png", "mfu_vs_size.png", "throughput_vs_batch.png",
         "memory_vs_batch.png")


class BadInput(ValueError):
  pass


def load(sweep_dir: str) -> list[dict]:
  """The sweep's result lines in point order, with summary fields filled from the run dirs."""
  if not os.path.isfile(os.path.join(sweep_dir, "results.jsonl")):
    raise BadInput(f"{sweep_dir}: no results.jsonl (is it the --out of a `jaxbench sweep`?)")
  rows = sorted(sweep_lib.read_results(sweep_dir).values(),
                key=lambda r: (r.get("index", 0), r.get("repeat") or 1))
  if not rows:
    raise BadInput(f"{sweep_dir}/results.jsonl has no results yet")
  for r in rows:
    run_dir = os.path.join(sweep_dir, r.get("run_dir") or "")
    if r.get("status") == "ok":
      try:
        summary = rundir_lib.read_json(os.path.join(run_dir, "summary.json"))
      except (OSError, ValueError):
        summary = {}
      for k in (*sweep_lib.SUMMARY_FIELDS, "peak_memory_source", "peak_source"):
        if r.get(k) is None:
          r[k] = summary.get(k)
    r["group"] = " / ".join(str(r.get(k) or "?") for k in ("framework", "backend", "device_kind"))
  # Presets set their own dtype (mpt.py:small float32, :125m bfloat16): where the points' dtypes
  # differ, each dtype is a group of its own, so no table or curve mixes their MFU.
  if len({r.get("dtype") for r in rows if r.get("status") == "ok"}) > 1:
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


def size_label(r: dict) -> str:
  """The model: family:preset and its size (a preset's size can be overridden, e.g. d_model)."""
  name = f"{r.get('family') or ''}:{r.get('preset') or _value(r, 'preset') or '?'}".lstrip(":")
  n = r.get("n_params")
  return f"{name} ({n / 1e6:.3g}M)" if _finite(n) else name


def series_label(r: dict, keys: list[str], extra: str | None = None) -> str:
  parts = [r["group"], *(f"{k.split('.')[-1]}={_value(r, k)}" for k in keys)]
  if extra:
    parts.append(extra)
  return ", ".join(p for p in parts if p)


def _md(text) -> str:
  return str(text).replace("|", "\\|").replace("\n", " ")


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
  return (["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
          + ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows])


def results_tables(rows: list[dict]) -> list[str]:
  ok = [r for r in rows if r.get("status") == "ok"]
  keys = other_keys(rows)
  lines = []
  for group in dict.fromkeys(r["group"] for r in ok):
    members = sorted((r for r in ok if r["group"] == group),
                     key=lambda r: (r.get("n_params") or 0, r.get("batch_size") or 0,
                                    [repr(_value(r, k)) for k in keys]))
    head = ["model", "batch", *keys, "tokens/s/device", "MFU", "step time", "compile",
            "peak memory/device", "final loss"]
    table = []
    for r in members:
      batch = str(r.get("batch_size") or "?")
      if (r.get("max_batch") or {}).get("batch_size"):
        batch += " (max)"
      loss = r.get("final_loss")
      table.append([size_label(r), batch,
                    *(str(_value(r, k)) for k in keys),
                    fmt_count(r.get("tokens_per_s_per_device_median")),
                    fmt_pct(r.get("mfu_median")), fmt_seconds(r.get("step_time_s_median")),
                    fmt_seconds(r.get("compile_s")), fmt_bytes(r.get("peak_memory_bytes_per_device")),
                    f"{loss:.4f}" if isinstance(loss, (int, float)) else "unknown"])
    n_dev = {r.get("n_devices") for r in members}
    lines += ["", f"### {group} ({', '.join(str(n) for n in sorted(n_dev, key=str))} device(s))", ""]
    lines += _table(head, table)
  searched = [r for r in rows if r.get("max_batch")]
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
    table.append([r["id"], *(str(_value(r, k)) for k in keys), r.get("status", "?"),
                  r.get("reason", ""), (last[-1] if last else "")[:240]])
  return ["", "## Failures", ""] + _table(["point", *keys, "status", "why", "last error line"],
                                          table)


# --- Plots ---------------------------------------------------------------------------------------
def have_matplotlib() -> bool:
  try:
    return importlib.util.find_spec("matplotlib") is not None
  except (ImportError, ValueError):  # e.g. sys.modules["matplotlib"] = None
    return False


def _figure():
  from matplotlib.figure import Figure  # no pyplot: Agg, and no global backend change
  fig = Figure(figsize=(8, 4.8), layout="constrained")
  return fig, fig.subplots()


def _finite(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _series(rows: list[dict], x_key: str, y_key: str, label) -> dict[str, list[tuple]]:
  series = {}
  for r in rows:
    x, y = r.get(x_key), r.get(y_key)
    if _finite(x) and _finite(y):
      series.setdefault(label(r), []).append((x, y))
  return {k: sorted(v) for k, v in series.items()}


def _plot(series: dict, path: str, xlabel: str, ylabel: str, title: str, log_x: bool,
          scale: float = 1.0, tick_label=None) -> bool:
  if not series:
    return False
  fig, ax = _figure()
  for i, (label, points) in enumerate(series.items()):
    ax.plot([p[0] for p in points], [p[1] * scale for p in points], marker="o", color=f"C{i % 10}",
            label=label)
  if log_x:
    ax.set_xscale("log", base=2 if tick_label is None else 10)
    ax.minorticks_off()
  xs = sorted({p[0] for points in series.values() for p in points})
  ax.set_xticks(xs, [tick_label(x) if tick_label else f"{x:g}" for x in xs])
  ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize="small")
  fig.savefig(path, dpi=100)
  return True


def write_plots(rows: list[dict], out: str) -> dict[str, str]:
  """The plots there was data for: file name -> caption."""
  ok = [r for r in rows if r.get("status") == "ok"]
  keys = other_keys(rows)
  by_size = lambda r: series_label(r, keys, f"batch {r.get('batch_size')}")  # noqa: E731
  by_batch = lambda r: series_label(r, keys, size_label(r))  # noqa: E731
  specs = {
      "throughput_vs_size.png": (by_size, "n_params", "tokens_per_s_per_device_median",
                                 "parameters", "tokens/s per device (median)",
                                 "Throughput against model size", True, 1.0),
      "mfu_vs_size.png": (by_size, "n_params", "mfu_median", "parameters", "MFU (%)",
                          "MFU against model size", True, 100.0),
      "throughput_vs_batch.png": (by_batch, "batch_size", "tokens_per_s_per_device_median",
                                  "global batch (sequences)", "tokens/s per device (median)",
                                  "Throughput against batch", True, 1.0),
      "memory_vs_batch.png": (by_batch, "batch_size", "peak_memory_bytes_per_device",
                              "global batch (sequences)", "peak memory per device (GiB)",
                              "Peak memory against batch", True, 1 / 2**30),
  }
  written = {}
  for name, (label, x, y, xl, yl, title, log_x, scale) in specs.items():
    ticks = (lambda n: f"{n / 1e6:.3g}M") if x == "n_params" else None
    if _plot(_series(ok, x, y, label), os.path.join(out, name), xl, yl, title, log_x, scale, ticks):
      written[name] = title
  return written


# --- report.md -----------------------------------------------------------------------------------
def format_report(sweep_dir: str, rows: list[dict], plots: dict[str, str] | None,
                  out: str) -> str:
  counts = {}
  for r in rows:
    counts[r.get("status", "?")] = counts.get(r.get("status", "?"), 0) + 1
  lines = [f"# Sweep report: {os.path.abspath(sweep_dir)}", "",
           f"{len(rows)} points: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".",
           "Throughput is the median tokens/s per device over the timed steps; MFU against the "
           "peak each run names in its run.json."]
  keys = varied_keys(rows)
  if keys:
    lines.append("Varied: " + ", ".join(f"`{k}`" for k in keys) + ".")
  for field, what in (("peak_source", "MFU peak"), ("peak_memory_source", "Peak memory")):
    sources = sorted({str(r[field]) for r in rows if r.get(field)})
    if sources:
      lines.append(f"{what}: " + "; ".join(sources) + ".")
  lines += ["", "## Results"] + results_tables(rows)
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
                f"`jaxbench compare`), `{rel}/points/<id>/log.txt` (its output)."]
  return "\n".join(lines) + "\n"


def report(sweep_dir: str, out: str | None = None) -> tuple[str, dict | None]:
  out = out or sweep_dir
  rows = load(sweep_dir)
  os.makedirs(out, exist_ok=True)
  plots = write_plots(rows, out) if have_matplotlib() else None
  path = os.path.join(out, "report.md")
  with open(path, "w") as f:
    f.write(format_report(sweep_dir, rows, plots, out))
  return path, plots


class _Parser(argparse.ArgumentParser):

  def error(self, message):
    raise BadInput(message)


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  if cli.asks_for_help(argv):
    print(__doc__.strip())
    return 0
  parser = _Parser(prog=argv[0] if argv else "jaxbench report", add_help=False)
  parser.add_argument("sweep_dir")
  parser.add_argument("--out", default=None)
  try:
    args = parser.parse_args(argv[1:])
    if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
      raise BadInput(f"--out={args.out} exists and is not a directory")
    path, plots = report(args.sweep_dir, args.out)
  except BadInput as e:
    print(f"jaxbench report: bad input: {e}", file=sys.stderr)
    return 2
  if plots is None:
    print("jaxbench report: matplotlib is not installed: tables only "
          "(pip install 'jaxbench[plots]' for the plots)", file=sys.stderr)
  with open(path) as f:
    print(f.read().split("\n## Plots")[0])
  print(f"wrote {path}" + (f" and {', '.join(plots)}" if plots else ""))
  return 0


if __name__ == "__main__":
  sys.exit(main())
