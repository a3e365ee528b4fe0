"""`jaxbench compare`: "B delivers X% of A's per-device throughput", with its evidence.

  jaxbench compare RUN_DIR RUN_DIR [RUN_DIR ...] [--out=DIR] [--labels=A,B,...]
                   [--loss_tolerance=0.01]

The first run is the baseline; every other run is compared against it:
- throughput: the median tokens/s per device (summary.json) and its ratio to the baseline's, the
  headline sentence; MFU (or why it is unknown: the peak's source); the step-time median and its
  p10-p90 spread; compile time; peak memory per device.
- loss-curve agreement over the steps both runs have: the max and mean relative difference
  |loss_B - loss_A| / |loss_A|, and the loss difference at the last common step. The curves are
  called "matching" only when the max relative difference is below --loss_tolerance (default 1%,
  loose enough for float rounding across backends and kernels over a short run, tight enough to
  catch a different model, data or optimizer); the threshold is printed with the verdict.
- a diff of what differs: backend, device kind and count, platform version, driver, package
  versions, env (XLA_FLAGS, ...), attention implementation, mesh, and every config key (dotted).
- the collectives of one step per device, side by side, where the runs recorded them: a JAX run's
  as XLA compiled them (run.json's compile.collectives, read from the HLO), a twin run's as it
  issued them (run.json's collectives, counted in its first step): count and bytes by kind, so
  a reader sees whether two frameworks (or two meshes) moved the same bytes.
- warnings, on stderr and at the top of compare.md, when the runs are not comparable: a different
  model (family, a model.* key other than the implementation choices attention / remat /
  scan_layers, or the parameter count), tokens per step, seq_len, dtype, data or seed, optimizer
  (for the loss curves), or a run whose status is not "finished".

A terminal table goes to stdout. --out=DIR also writes compare.md, compare.json (the same numbers)
and PNG plots (loss.png, step_times.png, throughput.png), which need matplotlib (the `plots`
extra). Exit 0 with the report (warnings do not change it), 2 on bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import statistics
import sys

from jaxbench import cli
from jaxbench import rundir as rundir_lib

LOSS_TOLERANCE = 0.01
RUN_FILES = ("run.json", "summary.json", "metrics.jsonl")

# model.* keys that choose how the same model is computed, not what it computes: comparing them is
# the point of a study, so they are diffed but do not make runs incomparable.
IMPLEMENTATION_MODEL_KEYS = ("attention", "remat", "scan_layers")

# run.json entries diffed between runs (dicts are flattened to dotted keys). Left out: what is
# measured (compile), what always differs (started_at, host.argv), and bulky derived detail.
CONTEXT_KEYS = ("backend", "platform", "platform_version", "driver", "device_kind", "n_devices",
                "process_count", "distributed", "versions", "env", "attention.implementation",
                "mesh", "n_params", "flops_per_token", "formula", "peak.tflops", "peak.source",
                "jax_default_matmul_precision", "deterministic", "data", "git.commit", "git.dirty",
                "host.hostname", "host.cpu", "host.cpu_count", "config")

MISSING = "(absent)"

COLLECTIVES_NOTE = ("(one step, per device: calls and the bytes of their results, "
                    "jaxbench/hlo.py's units; XLA may fuse several into one call, the twin issues "
                    "each)")


class BadInput(ValueError):
  pass


@dataclasses.dataclass
class Run:
  path: str
  label: str
  info: dict  # run.json
  summary: dict  # summary.json
  metrics: list  # metrics.jsonl records

  def config(self, dotted: str, default=None):
    return lookup(self.info.get("config", {}), dotted, default)


# --- Reading -----------------------------------------------------------------------------------------
def _read_json_file(path: str) -> dict:
  try:
    obj = rundir_lib.read_json(path)
  except OSError as e:
    raise BadInput(f"{path}: cannot read: {e.strerror or e}") from None
  except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
    raise BadInput(f"{path}: not valid JSON: {e}") from None
  if not isinstance(obj, dict):
    raise BadInput(f"{path}: expected a JSON object, found {type(obj).__name__}")
  return obj


def load_run(path: str, label: str) -> Run:
  if not os.path.isdir(path):
    raise BadInput(f"{path}: not a run directory (no such directory)")
  missing = [name for name in RUN_FILES if not os.path.isfile(os.path.join(path, name))]
  if missing:
    raise BadInput(f"{path}: not a run directory (missing {', '.join(missing)})")
  info = _read_json_file(os.path.join(path, "run.json"))
  summary = _read_json_file(os.path.join(path, "summary.json"))
  try:
    metrics = rundir_lib.read_metrics(os.path.join(path, "metrics.jsonl"))
  except (OSError, UnicodeDecodeError) as e:
    raise BadInput(f"{os.path.join(path, 'metrics.jsonl')}: cannot read: {e}") from None
  return Run(path, label, info, summary, [m for m in metrics if isinstance(m, dict)])


def default_labels(paths: list[str]) -> list[str]:
  """The directory names, made unique: they name the runs in the sentences and plots."""
  names = [os.path.basename(os.path.normpath(p)) or p for p in paths]
  labels = []
  for i, name in enumerate(names):
    labels.append(name if names.count(name) == 1 else f"{name}#{i + 1}")
  return labels


# --- Small helpers --------------------------------------------------------------------------------
def lookup(d, dotted: str, default=None):
  for part in dotted.split("."):
    if not isinstance(d, dict) or part not in d:
      return default
    d = d[part]
  return d


def flatten(d: dict, prefix: str = "") -> dict:
  """{'a': {'b': 1}} -> {'a.b': 1}; an empty dict stays a value, so it is not lost."""
  out = {}
  for key, value in d.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict) and value:
      out.update(flatten(value, name + "."))
    else:
      out[name] = value
  return out


def _finite(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_count(x) -> str:
  if not _finite(x):
    return "unknown"
  return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def fmt_pct(x, digits: int = 1) -> str:
  return f"{x * 100:.{digits}f}%" if _finite(x) else "unknown"


def fmt_seconds(x) -> str:
  if not _finite(x):
    return "unknown"
  return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.1f} s"


def fmt_bytes(x) -> str:
  if not _finite(x):
    return "unknown"
  for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if abs(x) >= size:
      return f"{x / size:.1f} {unit}"
  return f"{x:.0f} B"


def fmt_value(v) -> str:
  if isinstance(v, str):
    return v if v else '""'
  return "null" if v is None else str(v)


def fmt_tolerance(tol: float) -> str:
  return f"{tol * 100:g}%"


# --- Throughput, MFU, timing ---------------------------------------------------------------------
def mfu_text(run: Run) -> tuple[str, str | None]:
  """MFU for the table, and why it is unknown (None when known)."""
  mfu = run.summary.get("mfu_median")
  peak = run.info.get("peak") or {}
  source = peak.get("source") or run.summary.get("peak_source") or "unknown"
  if _finite(mfu):
    return f"{fmt_pct(mfu, 2)} ({source} peak)", None
  if not _finite(run.summary.get("tflops_per_s_per_device_median")):
    return "unknown (no timed steps)", "no timed steps, so no throughput"
  why = f"peak source {source}: {peak.get('detail') or run.info.get('mfu_note') or 'no peak known'}"
  return f"unknown (peak source {source})", why


def timed_step_times(run: Run) -> list[float]:
  """The step times the summary's statistics are made of: the records marked `timed` (the first
  warmup_steps_excluded steps after each (re)start are compile-adjacent and noisy, and traced steps
  are slowed by the tracer), after the summary's `timed_since_step`. Runs written before records
  carried `timed`: the steps after the last restart's warm-up."""
  if any("timed" in m for m in run.metrics):
    since = run.summary.get("timed_since_step") or 0
    return [m["step_time_s"] for m in run.metrics
            if m.get("timed") and (m.get("step") or 0) > since and _finite(m.get("step_time_s"))]
  first_timed = (run.summary.get("resumed_from_step") or 0) + (run.config("warmup_steps_excluded") or 0)
  return [m["step_time_s"] for m in run.metrics
          if (m.get("step") or 0) > first_timed and _finite(m.get("step_time_s"))]


def throughput(base: Run, run: Run) -> dict:
  mine, theirs = (r.summary.get("tokens_per_s_per_device_median") for r in (run, base))
  ratio = mine / theirs if _finite(mine) and _finite(theirs) and theirs > 0 else None
  return {"tokens_per_s_per_device": mine if _finite(mine) else None, "ratio": ratio}


# --- Loss curves ----------------------------------------------------------------------------------
def loss_by_step(metrics: list[dict]) -> dict[int, float | None]:
  """Step -> loss; a later record of a step wins (a resumed run repeats none, but be safe)."""
  return {m["step"]: m.get("loss") for m in metrics if isinstance(m.get("step"), int)}


def loss_agreement(base: Run, run: Run, tolerance: float) -> dict:
  a, b = loss_by_step(base.metrics), loss_by_step(run.metrics)
  steps = sorted(set(a) & set(b))
  result = {"common_steps": len(steps), "first_step": steps[0] if steps else None,
            "last_step": steps[-1] if steps else None, "max_rel_diff": None, "max_rel_diff_step": None,
            "mean_rel_diff": None, "final_loss_diff": None, "tolerance": tolerance,
            "matching": False, "note": None}
  if not steps:
    result["note"] = "no common steps"
    return result
  bad = [s for s in steps if not (_finite(a[s]) and _finite(b[s]))]
  if bad:
    # Training records a non-finite loss as null; such curves cannot match anything.
    result["note"] = f"non-finite loss at step {bad[0]}"
    return result
  rel = [abs(b[s] - a[s]) / max(abs(a[s]), 1e-12) for s in steps]
  worst = max(range(len(steps)), key=rel.__getitem__)
  result.update(max_rel_diff=rel[worst], max_rel_diff_step=steps[worst],
                mean_rel_diff=statistics.fmean(rel), final_loss_diff=b[steps[-1]] - a[steps[-1]],
                matching=rel[worst] < tolerance)
  return result


def loss_clause(agreement: dict) -> str:
  tol = fmt_tolerance(agreement["tolerance"])
  if agreement["max_rel_diff"] is None:
    return f"loss curves not compared ({agreement['note']})"
  evidence = (f"max relative difference {fmt_pct(agreement['max_rel_diff'], 2)} "
              f"{'<' if agreement['matching'] else '>='} {tol} over {agreement['common_steps']} "
              f"common steps")
  if agreement["matching"]:
    return f"with matching loss curves ({evidence})"
  return f"loss curves do NOT match ({evidence})"


def headline(base: Run, run: Run, tp: dict, agreement: dict) -> str:
  if tp["ratio"] is None:
    which = base if tp["tokens_per_s_per_device"] is not None else run
    return (f"{run.label} vs {base.label}: throughput ratio unknown ({which.label} has no timed "
            f"steps, status {which.summary.get('status', '?')}); {loss_clause(agreement)}")
  return (f"{run.label} delivers {fmt_pct(tp['ratio'])} of {base.label}'s per-device throughput "
          f"(tokens/s/device {fmt_count(tp['tokens_per_s_per_device'])} vs "
          f"{fmt_count(base.summary.get('tokens_per_s_per_device_median'))}), {loss_clause(agreement)}")


# --- What differs ----------------------------------------------------------------------------------
def context(info: dict) -> dict:
  out = {}
  for key in CONTEXT_KEYS:
    value = lookup(info, key, MISSING)
    if isinstance(value, dict) and value:
      out.update(flatten(value, key + "."))
    else:
      out[key] = value
  return out


def metadata_diff(runs: list[Run]) -> list[dict]:
  """Every context key where some run's value differs from the baseline's, in a stable order."""
  contexts = [context(r.info) for r in runs]
  keys = list(contexts[0])
  keys += sorted({k for c in contexts[1:] for k in c} - set(keys))
  rows = []
  for key in keys:
    values = [c.get(key, MISSING) for c in contexts]
    if any(v != values[0] for v in values[1:]):
      rows.append({"key": key, "values": values})
  return rows


def _model_identity(run: Run) -> dict:
  model = run.config("model") or {}
  ident = {f"model.{k}": v for k, v in flatten(model).items()
           if k.split(".")[0] not in IMPLEMENTATION_MODEL_KEYS}
  ident["family"] = run.config("family")
  ident["n_params"] = run.info.get("n_params", run.summary.get("n_params"))
  return ident


def _data_identity(run: Run) -> dict:
  """The token stream: a prepared file is known by its content hash where run.json has one (the
  same file lives at different paths on different machines), else by its path."""
  data = flatten(run.config("data") or {})
  sha = lookup(run.info, "data.sha256")
  ident = {f"data.{k}": v for k, v in data.items() if not (sha and k == "path")}
  if sha:
    ident["data.sha256"] = sha
  ident["seed"] = run.config("seed")
  return ident


def _changed(base: dict, run: dict) -> list[str]:
  """'key run-value vs baseline-value' for each key that differs (the order of every warning)."""
  return [f"{k} {fmt_value(run.get(k, MISSING))} vs {fmt_value(base.get(k, MISSING))}"
          for k in sorted(set(base) | set(run)) if base.get(k, MISSING) != run.get(k, MISSING)]


def _tokens_per_step(run: Run):
  batch, seq = run.config("batch_size"), run.config("seq_len")
  return batch * seq if isinstance(batch, int) and isinstance(seq, int) else None


def comparability_warnings(base: Run, run: Run) -> list[str]:
  """Why `run` and the baseline do not measure the same thing (empty: they do)."""
  problems = []
  model = _changed(_model_identity(base), _model_identity(run))
  if model:
    problems.append(f"different model ({'; '.join(model)})")
  if _tokens_per_step(base) != _tokens_per_step(run):
    problems.append(f"different tokens per step (batch_size*seq_len: {_tokens_per_step(run)} vs "
                    f"{_tokens_per_step(base)})")
  for key, what in (("seq_len", "seq_len"), ("dtype", "precision (dtype)")):
    if run.config(key) != base.config(key):
      problems.append(f"different {what} ({run.config(key)} vs {base.config(key)})")
  data = _changed(_data_identity(base), _data_identity(run))
  if data:
    problems.append(f"different data ({'; '.join(data)}); loss curves are not comparable")
  optimizer = _changed(flatten(base.config("optimizer") or {}), flatten(run.config("optimizer") or {}))
  if optimizer:
    problems.append(f"different optimizer ({'; '.join(optimizer)}); loss curves are not comparable")
  if run.config("steps") != base.config("steps"):
    problems.append(f"different steps ({run.config('steps')} vs {base.config('steps')}): the "
                    "learning-rate schedule follows them, so the loss curves are not comparable")
  if run.config("warmup_steps_excluded") != base.config("warmup_steps_excluded"):
    problems.append(f"different warm-up steps left out of the timing "
                    f"({run.config('warmup_steps_excluded')} vs {base.config('warmup_steps_excluded')})")
  # (An unknown peak gives no MFU to compare: the table says so.)
  peaks = [(r.info.get("peak") or {}).get("source") for r in (run, base)]
  if not {None, "unknown"} & set(peaks) and peaks[0] != peaks[1]:
    problems.append(f"MFU against peaks of different kinds ({peaks[0]} vs {peaks[1]}: a datasheet "
                    "figure, a measurement or an override are not the same yardstick)")
  warnings = [f"{run.label} vs {base.label}: {p}" for p in problems]
  return warnings


def status_warnings(runs: list[Run]) -> list[str]:
  return [f"{r.label}: status is {r.summary.get('status', MISSING)!r}, not 'finished'; its numbers "
          f"cover only the steps it ran" for r in runs if r.summary.get("status") != "finished"]


# --- Collectives ----------------------------------------------------------------------------------
def collectives_of(run: Run) -> dict | None:
  """{"per_device": {kind: {count, bytes}}, "source": ..., "note": ...} of one step of a run, or
  None where run.json holds none (one process's twin run, an older run, a backend without HLO)."""
  counted = run.info.get("collectives")
  if isinstance(counted, dict) and isinstance(counted.get("per_device"), dict):
    return {"per_device": counted["per_device"],
            "source": f"calls issued in step {counted.get('step', '?')}", "note": None}
  compiled = lookup(run.info, "compile.collectives")
  if not isinstance(compiled, dict) or "unavailable" in compiled:
    return None
  loops = [key for key, on in (("scan_layers", run.config("model.scan_layers")),
                               ("microbatches > 1", (run.config("microbatches") or 1) > 1)) if on]
  note = None
  if loops:
    note = (f"{run.label}: XLA's HLO holds a loop body once ({', '.join(loops)}): its counts "
            "are of one layer or microbatch there, not of the whole step; "
            "model.scan_layers=False and microbatches=1 count the step")
  return {"per_device": compiled, "source": "XLA's compiled HLO", "note": note}


def collectives_table(runs: list[Run]) -> dict | None:
  """The runs' collectives side by side, kinds that any run issued (None where no run did)."""
  found = [collectives_of(r) for r in runs]
  kinds = []
  for entry in found:
    for kind, v in (entry or {}).get("per_device", {}).items():
      if isinstance(v, dict) and v.get("count") and kind not in kinds:
        kinds.append(kind)
  if not kinds:
    return None
  return {"kinds": kinds, "runs": [{"label": r.label, **(e or {"per_device": None,
                                                             "source": "not recorded",
                                                             "note": None})}
                                   for r, e in zip(runs, found)]}


def _collective_cell(per_device: dict | None, kinds) -> str:
  if per_device is None:
    return "-"
  values = [per_device.get(k) or {} for k in kinds]
  count = sum(v.get("count", 0) for v in values)
  if not count:
    return "none"
  return f"{count} x, {fmt_bytes(sum(v.get('bytes', 0) for v in values))}"


def collectives_rows(table: dict) -> list[list[str]]:
  header = ["collectives per device"] + [e["label"] for e in table["runs"]]
  rows = [[kind] + [_collective_cell(e["per_device"], [kind]) for e in table["runs"]]
          for kind in table["kinds"]]
  rows.append(["total"] + [_collective_cell(e["per_device"], table["kinds"])
                           for e in table["runs"]])
  rows.append(["read from"] + [e["source"] for e in table["runs"]])
  return [header] + rows


# --- The comparison --------------------------------------------------------------------------------
def _run_entry(base: Run, run: Run, tolerance: float, diff: list[dict], index: int) -> dict:
  s = run.summary
  tp = throughput(base, run)
  mfu, mfu_unknown = mfu_text(run)
  agreement = loss_agreement(base, run, tolerance)
  return {
      "label": run.label, "path": os.path.abspath(run.path), "baseline": index == 0,
      "status": s.get("status"), "steps": s.get("steps"), "timed_steps": s.get("timed_steps"),
      "backend": run.info.get("backend", s.get("backend")),
      "device_kind": run.info.get("device_kind", s.get("device_kind")),
      "n_devices": run.info.get("n_devices", s.get("n_devices")),
      "tokens_per_s_per_device": tp["tokens_per_s_per_device"], "throughput_ratio": tp["ratio"],
      "tflops_per_s_per_device": s.get("tflops_per_s_per_device_median"),
      "mfu": s.get("mfu_median") if _finite(s.get("mfu_median")) else None, "mfu_text": mfu,
      "mfu_unknown_reason": mfu_unknown,
      "peak_tflops_per_device": lookup(run.info, "peak.tflops", s.get("peak_tflops_per_device")),
      "peak_source": lookup(run.info, "peak.source", s.get("peak_source")),
      "step_time_s_median": s.get("step_time_s_median"), "step_time_s_p10": s.get("step_time_s_p10"),
      "step_time_s_p90": s.get("step_time_s_p90"), "compile_s": s.get("compile_s"),
      "peak_memory_bytes_per_device": s.get("peak_memory_bytes_per_device"),
      "peak_memory_source": s.get("peak_memory_source"), "final_loss": s.get("final_loss"),
      "loss_agreement": None if index == 0 else agreement,
      "headline": None if index == 0 else headline(base, run, tp, agreement),
      "differs_from_baseline": [row["key"] for row in diff if row["values"][index] != row["values"][0]],
  }


def compare(runs: list[Run], tolerance: float = LOSS_TOLERANCE) -> dict:
  """Everything compare.json holds; the text and the plots are made from it (and the runs)."""
  base = runs[0]
  diff = metadata_diff(runs)
  warnings = status_warnings(runs)
  for run in runs[1:]:
    warnings += comparability_warnings(base, run)
  entries = [_run_entry(base, run, tolerance, diff, i) for i, run in enumerate(runs)]
  return {"baseline": base.label, "loss_tolerance": tolerance,
          "loss_rule": (f"matching = max over common steps of |loss - baseline loss| / |baseline loss| "
                        f"< {fmt_tolerance(tolerance)}"),
          "warnings": warnings, "headlines": [e["headline"] for e in entries[1:]],
          # A key a run does not have reads "(absent)", apart from a recorded null.
          "runs": entries, "diff": diff, "collectives": collectives_table(runs), "plots": []}


# --- Text ----------------------------------------------------------------------------------------
def _loss_cell(e: dict) -> str:
  a = e["loss_agreement"]
  if a is None:
    return "(baseline)"
  if a["max_rel_diff"] is None:
    return a["note"]
  verdict = "matching" if a["matching"] else "NOT matching"
  return (f"{verdict}: max {fmt_pct(a['max_rel_diff'], 2)}, mean {fmt_pct(a['mean_rel_diff'], 2)}, "
          f"final {a['final_loss_diff']:+.4f} ({a['common_steps']} steps)")


def table_rows(result: dict) -> list[list[str]]:
  """The comparison table, one column per run (the baseline first)."""
  runs = result["runs"]
  header = [""] + [f"{e['label']} (baseline)" if e["baseline"] else e["label"] for e in runs]

  def spread(e):
    if not _finite(e["step_time_s_p10"]):
      return "unknown"
    return f"{fmt_seconds(e['step_time_s_p10'])} - {fmt_seconds(e['step_time_s_p90'])}"

  rows = [
      ("status", lambda e: f"{e['status']} ({e['steps']} steps, {e['timed_steps']} timed)"),
      ("device", lambda e: f"{e['n_devices']} x {e['device_kind']} ({e['backend']})"),
      ("tokens/s/device", lambda e: fmt_count(e["tokens_per_s_per_device"])),
      ("vs baseline", lambda e: fmt_pct(e["throughput_ratio"])),
      ("MFU", lambda e: e["mfu_text"]),
      ("step time median", lambda e: fmt_seconds(e["step_time_s_median"])),
      ("step time p10 - p90", spread),
      ("compile", lambda e: fmt_seconds(e["compile_s"])),
      ("peak memory/device", lambda e: fmt_bytes(e["peak_memory_bytes_per_device"])),
      ("final loss", lambda e: f"{e['final_loss']:.4f}" if _finite(e["final_loss"]) else "unknown"),
      ("loss vs baseline", _loss_cell),
  ]
  return [header] + [[name] + [cell(e) for e in runs] for name, cell in rows]


def diff_rows(result: dict) -> list[list[str]]:
  header = ["what differs"] + [e["label"] for e in result["runs"]]
  return [header] + [[row["key"]] + [fmt_value(v) for v in row["values"]] for row in result["diff"]]


def format_text_table(rows: list[list[str]]) -> str:
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def _md_cell(text: str) -> str:
  return text.replace("|", "\\|").replace("\n", " ")


def format_md_table(rows: list[list[str]]) -> str:
  lines = ["| " + " | ".join(_md_cell(c) for c in rows[0]) + " |",
           "|" + "|".join(" --- " for _ in rows[0]) + "|"]
  lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows[1:]]
  return "\n".join(lines)


def format_terminal(result: dict) -> str:
  parts = []
  if result["warnings"]:
    parts.append(f"!! {len(result['warnings'])} comparability warning(s), printed on stderr: these "
                 "runs do not measure the same thing")
  parts += [format_text_table(table_rows(result)), ""]
  parts += result["headlines"] + [f"(loss curves: {result['loss_rule']})", ""]
  if result.get("collectives"):
    parts += [format_text_table(collectives_rows(result["collectives"])), COLLECTIVES_NOTE]
    parts += [e["note"] for e in result["collectives"]["runs"] if e["note"]] + [""]
  if result["diff"]:
    parts.append(format_text_table(diff_rows(result)))
  else:
    parts.append("what differs: nothing recorded differs between the runs")
  return "\n".join(parts)


def format_markdown(result: dict) -> str:
  parts = ["# jaxbench compare", ""]
  if result["warnings"]:
    parts += ["## WARNING: not comparable", ""]
    parts += [f"- **WARNING** {_md_cell(w)}" for w in result["warnings"]] + [""]
  parts += ["## Summary", ""]
  parts += [f"- {h}" for h in result["headlines"]]
  parts += ["", f"Loss curves: {result['loss_rule']}.", "", "## Runs", "",
            format_md_table(table_rows(result)), ""]
  # Where each number came from: the run folder, and what its peak memory counts (a GPU's
  # allocator peak and a CPU process's RSS are not the same measure).
  paths = [f"- {e['label']}: `{e['path']}`; peak memory: {_md_cell(str(e['peak_memory_source']))}"
           for e in result["runs"]]
  unknown = [f"- MFU of {e['label']} is unknown: {_md_cell(e['mfu_unknown_reason'])}"
             for e in result["runs"] if e["mfu_unknown_reason"]]
  parts += paths + unknown
  if result.get("collectives"):
    parts += ["", "## Collectives", "", format_md_table(collectives_rows(result["collectives"])),
              "", COLLECTIVES_NOTE]
    parts += [f"- {_md_cell(e['note'])}" for e in result["collectives"]["runs"] if e["note"]]
  parts += ["", "## What differs", ""]
  parts.append(format_md_table(diff_rows(result)) if result["diff"]
               else "Nothing recorded differs between the runs.")
  if result["plots"]:
    parts += ["", "## Plots", ""] + [f"![{p}]({p})" for p in result["plots"]]
  return "\n".join(parts) + "\n"


# --- Plots -----------------------------------------------------------------------------------------
def require_matplotlib() -> None:
  try:
    import matplotlib  # noqa: F401
  except ImportError:
    raise BadInput("--out writes PNG plots with matplotlib, which is not installed: "
                   "pip install 'jaxbench[plots]'") from None


def _figure(rows: int = 1, height: float = 4.5):
  # Figure without pyplot renders with Agg and leaves the caller's global backend alone.
  from matplotlib.figure import Figure
  fig = Figure(figsize=(8, height), layout="constrained")
  return fig, fig.subplots(rows, 1, squeeze=False)[:, 0]


def plot_losses(runs: list[Run], tolerance: float, path: str) -> None:
  fig, (ax, rel_ax) = _figure(2, 7)
  base = loss_by_step(runs[0].metrics)
  for i, run in enumerate(runs):
    # One colour per run in both panels; the baseline drawn wide underneath, so a run that matches
    # it exactly still shows both lines.
    style = {"color": f"C{i}", "linewidth": 3.0 if i == 0 else 1.2, "label": run.label}
    curve = sorted((s, v) for s, v in loss_by_step(run.metrics).items() if _finite(v))
    ax.plot([s for s, _ in curve], [v for _, v in curve], **style)
    common = [(s, v) for s, v in curve if _finite(base.get(s))]
    if i > 0 and common:
      rel = [100 * abs(v - base[s]) / max(abs(base[s]), 1e-12) for s, v in common]
      rel_ax.plot([s for s, _ in common], rel, **style)
  ax.set(xlabel="step", ylabel="loss", title="Loss curves")
  ax.legend()
  rel_ax.axhline(100 * tolerance, color="gray", linestyle="--",
                 label=f"tolerance {fmt_tolerance(tolerance)}")
  rel_ax.set(xlabel="step", ylabel="relative difference (%)",
             title=f"|loss - loss of {runs[0].label}| / loss of {runs[0].label}")
  rel_ax.legend()
  fig.savefig(path, dpi=100)


def plot_step_times(runs: list[Run], path: str) -> None:
  fig, (ax,) = _figure()
  data = [[t * 1e3 for t in timed_step_times(r)] for r in runs]
  positions = [i + 1 for i, d in enumerate(data) if d]
  if positions:
    ax.boxplot([d for d in data if d], positions=positions, showmeans=True)
  ax.set_xticks(range(1, len(runs) + 1),
                [f"{r.label}\n({len(d)} timed)" for r, d in zip(runs, data)])
  ax.set(ylabel="step time (ms)", title="Step times of the timed steps (warmup steps excluded)")
  fig.savefig(path, dpi=100)


def plot_throughput(result: dict, path: str) -> None:
  fig, (ax,) = _figure()
  entries = result["runs"]
  heights = [e["tokens_per_s_per_device"] or 0 for e in entries]
  bars = ax.bar(range(len(entries)), heights, color="tab:blue")
  labels = [fmt_pct(e["throughput_ratio"]) for e in entries]
  ax.bar_label(bars, labels=[f"{fmt_count(e['tokens_per_s_per_device'])}\n{p}"
                             for e, p in zip(entries, labels)])
  ax.set_xticks(range(len(entries)), [e["label"] for e in entries])
  ax.set(ylabel="tokens/s per device (median)",
         title=f"Per-device throughput, % of {result['baseline']}")
  ax.margins(y=0.2)
  fig.savefig(path, dpi=100)


def write_outputs(runs: list[Run], result: dict, out: str) -> None:
  os.makedirs(out, exist_ok=True)
  result["plots"] = ["loss.png", "step_times.png", "throughput.png"]
  plot_losses(runs, result["loss_tolerance"], os.path.join(out, "loss.png"))
  plot_step_times(runs, os.path.join(out, "step_times.png"))
  plot_throughput(result, os.path.join(out, "throughput.png"))
  with open(os.path.join(out, "compare.md"), "w") as f:
    f.write(format_markdown(result))
  rundir_lib.write_json(os.path.join(out, "compare.json"), result)


# --- `jaxbench compare` ----------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):

  def error(self, message):  # one line on stderr and exit 2, as every jaxbench command
    raise BadInput(message)


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = _Parser(prog=argv[0] if argv else "jaxbench compare", add_help=False)
  parser.add_argument("run_dirs", nargs="*")
  parser.add_argument("--out", default=None)
  parser.add_argument("--labels", default=None)
  parser.add_argument("--loss_tolerance", type=float, default=LOSS_TOLERANCE)
  args = parser.parse_args(argv[1:])
  if len(args.run_dirs) < 2:
    raise BadInput(f"need at least two run directories (the first is the baseline), got "
                   f"{len(args.run_dirs)}")
  if not (math.isfinite(args.loss_tolerance) and args.loss_tolerance > 0):
    raise BadInput(f"--loss_tolerance must be a positive number, got {args.loss_tolerance}")
  if args.labels is not None:
    args.labels = [s.strip() for s in args.labels.split(",")]
    if len(args.labels) != len(args.run_dirs) or not all(args.labels):
      raise BadInput(f"--labels needs {len(args.run_dirs)} non-empty comma-separated names, one per "
                     f"run directory")
  if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
    raise BadInput(f"--out={args.out} exists and is not a directory")
  return args


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  if cli.asks_for_help(argv):
    print(__doc__.strip())
    return 0
  try:
    args = parse_args(argv)
    if args.out is not None:
      require_matplotlib()  # before any work, so a missing extra costs nothing
    labels = args.labels or default_labels(args.run_dirs)
    runs = [load_run(path, label) for path, label in zip(args.run_dirs, labels)]
  except BadInput as e:
    print(f"jaxbench compare: bad input: {e}", file=sys.stderr)
    return 2
  result = compare(runs, args.loss_tolerance)
  for w in result["warnings"]:
    print(f"jaxbench compare: WARNING: {w}", file=sys.stderr)
  if args.out is not None:
    write_outputs(runs, result, args.out)
  print(format_terminal(result))
  if args.out is not None:
    print(f"\nwrote {', '.join(['compare.md', 'compare.json', *result['plots']])} to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
