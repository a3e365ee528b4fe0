"""`jaxbench compare`: "B delivers X% of A's per-device throughput", with its evidence.

  jaxbench compare RUN_DIR RUN_DIR [RUN_DIR ...] [--out=DIR] [--labels=A,B,...]
                   [--loss_tolerance=0.01]

A RUN_DIR may also be a sweep's point directory (SWEEP/points/<id>) that ran several times
(`repeats`): its first run (run/) is the run compared, and the intervals are over all its runs
(run/, run-2/, ...) and their steps.

The first run is the baseline; every other run is compared against it:
- throughput: the median tokens/s per device (summary.json) and its ratio to the baseline's, each
  with its 95% bootstrap interval over the timed steps (jaxbench/intervals.py), the headline
  sentence. The ratio is stated no more precisely than its interval, and two runs whose ratio's
  interval holds 100% are "not distinguishable". A run whose step times spread wide (p90/p10 above
  1.25x) is called noisy next to its figure. MFU (or why it is unknown: the peak's source); the
  step-time median and its p10-p90 spread; compile time; peak memory per device.
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
  (for the loss curves), MFU against peaks of different kinds or measured under different
  conditions (a quiet machine and a busy one, peaks apart by more than 1.25x on one CPU), or a run
  whose status is not "finished"; and when runs of one framework ran on different releases of it
  (jax or jaxlib; torch), which a study across releases names.

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
from jaxbench import intervals
from jaxbench import rundir as rundir_lib
from jaxbench import timing
from jaxbench.errors import BadInput, bad_input
from jaxbench.tables import (figure, finite, fmt_bytes, fmt_count, fmt_pct, fmt_seconds, md_cell,
                             md_table, require_matplotlib, text_table)

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


@dataclasses.dataclass
class Run:
  path: str
  label: str
  info: dict  # run.json
  summary: dict  # summary.json
  metrics: list  # metrics.jsonl records
  # A sweep point's later runs (run-2/, run-3/, ... of SWEEP/points/<id>): more of the same
  # measurement, for the intervals; the rest of the comparison reads the first run.
  repeats: list = dataclasses.field(default_factory=list)

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
  """A run directory, or a sweep's point directory: its run/ with its repeats (run-k/)."""
  if (os.path.isdir(path) and not os.path.exists(os.path.join(path, "run.json"))
      and os.path.isfile(os.path.join(path, "run", "run.json"))):
    later = sorted((int(name[4:]), name) for name in os.listdir(path)
                   if name.startswith("run-") and name[4:].isdigit())
    first = _load_one(os.path.join(path, "run"), label)
    first.repeats = [_load_one(os.path.join(path, name), label) for _, name in later]
    return first
  return _load_one(path, label)


def _load_one(path: str, label: str) -> Run:
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
  if finite(mfu):
    return f"{fmt_pct(mfu, 2)} ({source} peak)", None
  if not finite(run.summary.get("tflops_per_s_per_device_median")):
    return "unknown (no timed steps)", "no timed steps, so no throughput"
  if run.summary.get("mfu_note"):
    return f"unknown (above the {source} peak)", run.summary["mfu_note"]
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
            if m.get("timed") and (m.get("step") or 0) > since and finite(m.get("step_time_s"))]
  first_timed = (run.summary.get("resumed_from_step") or 0) + (run.config("warmup_steps_excluded") or 0)
  return [m["step_time_s"] for m in run.metrics
          if (m.get("step") or 0) > first_timed and finite(m.get("step_time_s"))]


def work_per_step(run: Run) -> float | None:
  """Tokens one device processes in a step: what a step time is turned into tokens/s per device
  with (the summary's median throughput times its median step time; else from the config)."""
  tps, step = (run.summary.get(k) for k in ("tokens_per_s_per_device_median", "step_time_s_median"))
  if finite(tps) and finite(step):
    return tps * step
  tokens, n = _tokens_per_step(run), run.info.get("n_devices", run.summary.get("n_devices"))
  return tokens / n if tokens and isinstance(n, int) and n > 0 else None


def step_time_sets(run: Run) -> list[list[float]]:
  """The timed step times of each of the run's runs (one, or a sweep point's repeats)."""
  return [t for t in map(timed_step_times, [run, *run.repeats]) if t]


def throughput(base: Run, run: Run) -> dict:
  """The run's median tokens/s per device and its ratio to the baseline's, each with its
  bootstrap interval over the timed steps (and repeats; None where there are none), and the
  widest p90/p10 of its runs. With repeats the medians are over every run's timed steps."""
  mine, theirs = (r.summary.get("tokens_per_s_per_device_median") for r in (run, base))
  times, base_times = step_time_sets(run), step_time_sets(base)
  work, base_work = work_per_step(run), work_per_step(base)
  interval = intervals.throughput_interval(times, work) if work else None
  base_interval = intervals.throughput_interval(base_times, base_work) if base_work else None
  if run.repeats and interval:
    mine = interval.value
  if base.repeats and base_interval:
    theirs = base_interval.value
  ratio = mine / theirs if finite(mine) and finite(theirs) and theirs > 0 else None
  ratio_interval = None
  if ratio is not None and work and base_work and run is not base:
    ratio_interval = intervals.ratio_interval(base_times, base_work, times, work)
  spreads = [x for x in map(intervals.spread, times) if x is not None]
  spread = max(spreads) if spreads else None
  return {"tokens_per_s_per_device": mine if finite(mine) else None, "ratio": ratio,
          "interval": interval, "ratio_interval": ratio_interval, "spread": spread,
          "noisy": intervals.spread_note(spread), "runs": 1 + len(run.repeats)}


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
  bad = [s for s in steps if not (finite(a[s]) and finite(b[s]))]
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


def ratio_clause(run_label: str, base_label: str, ratio: float,
                 interval: intervals.Interval | None) -> str:
  """"B delivers 50% of A's per-device throughput (95% interval 49-51%", or that the two are
  not distinguishable; the figures no more precise than the interval (open: the caller closes)."""
  if interval is None:  # no step times to resample (a run directory without metrics)
    return f"{run_label} delivers {fmt_pct(ratio)} of {base_label}'s per-device throughput (no interval"
  value, bounds = intervals.percent_text(interval)
  confidence = f"{intervals.CONFIDENCE:.0%} interval"
  if interval.holds(1.0):
    return (f"{run_label} and {base_label} are not distinguishable in per-device throughput "
            f"({run_label} at {value} of {base_label}'s, {confidence} {bounds} holds 100%")
  return f"{run_label} delivers {value} of {base_label}'s per-device throughput ({confidence} {bounds}"


def _figure_text(tps, noisy: str | None) -> str:
  return fmt_count(tps) + (f" ({noisy})" if noisy else "")


def headline(base: Run, run: Run, tp: dict, agreement: dict, base_tp: dict | None = None) -> str:
  if tp["ratio"] is None:
    which = base if tp["tokens_per_s_per_device"] is not None else run
    return (f"{run.label} vs {base.label}: throughput ratio unknown ({which.label} has no timed "
            f"steps, status {which.summary.get('status', '?')}); {loss_clause(agreement)}")
  base_tp = base_tp or throughput(base, base)
  return (f"{ratio_clause(run.label, base.label, tp['ratio'], tp['ratio_interval'])}; tokens/s/device "
          f"{_figure_text(tp['tokens_per_s_per_device'], tp['noisy'])} vs "
          f"{_figure_text(base_tp['tokens_per_s_per_device'], base_tp['noisy'])}), "
          f"{loss_clause(agreement)}")


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


# The packages whose release is part of what a run of each framework measures: JAX's tracing and
# XLA (jaxlib), or torch. A study across releases is legitimate, but the release must be named.
FRAMEWORK_PACKAGES = {"jax": ("jax", "jaxlib"), "torch": ("torch",)}


def _release_changes(base: Run, run: Run) -> list[str]:
  """'package run-version vs baseline-version' for the framework's packages (FRAMEWORK_PACKAGES)
  that both runs recorded and that differ; none between runs of different frameworks (the
  framework is then what is compared, and the other framework's packages did not run the step)."""
  framework = base.config("framework") or "jax"
  if (run.config("framework") or "jax") != framework:
    return []
  versions = [r.info.get("versions") or {} for r in (base, run)]
  names = [n for n in FRAMEWORK_PACKAGES.get(framework, ()) if all(n in v for v in versions)]
  return _changed(*({n: v[n] for n in names} for v in versions))


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
  releases = _release_changes(base, run)
  if releases:
    problems.append(f"different releases ({'; '.join(releases)}): the compiler and its kernels "
                    "change between releases, so name them with the result")
  # (An unknown peak gives no MFU to compare: the table says so.)
  peaks = [(r.info.get("peak") or {}).get("source") for r in (run, base)]
  if not {None, "unknown"} & set(peaks) and peaks[0] != peaks[1]:
    problems.append(f"MFU against peaks of different kinds ({peaks[0]} vs {peaks[1]}: a datasheet "
                    "figure, a measurement or an override are not the same yardstick)")
  conditions = peak_condition_differences(base.info.get("peak") or {}, run.info.get("peak") or {},
                                          same_dtype=run.config("dtype") == base.config("dtype"))
  if conditions:
    problems.append(f"MFU against peaks measured under different conditions ({'; '.join(conditions)}"
                    "): their MFU ratio is not their throughput ratio")
  warnings = [f"{run.label} vs {base.label}: {p}" for p in problems]
  return warnings


# Measured peaks further apart than this on one CPU were measured under different loads.
PEAK_APART = 1.25


def peak_condition_differences(base_peak: dict, peak: dict, same_dtype: bool = True) -> list[str]:
  """How two measured peaks' conditions (run.json's peak.conditions, jaxbench/peak.py) differ in
  what moves a measurement: one made with the machine quiet and one busy, one whose conditions
  were not recorded, or (for one dtype) figures apart by more than PEAK_APART on the same CPU.
  (Another machine or CPU is what a study compares: the diff table shows it.) Values: `peak`'s
  first."""
  if base_peak.get("source") != "measured" or peak.get("source") != "measured":
    return []
  from jaxbench.peak import QUIET_LOAD
  a, b = peak.get("conditions"), base_peak.get("conditions")
  if not a and not b:
    return []
  if not a or not b:
    return ["the conditions of one were not recorded (a run from before they were)"]
  out = []

  def quiet(c):
    load = c.get("load_per_core")
    return None if not finite(load) else load <= QUIET_LOAD

  if quiet(a) is not None and quiet(b) is not None and quiet(a) != quiet(b):
    out.append(f"load average {a.get('load_avg_1m')} vs {b.get('load_avg_1m')} on "
               f"{a.get('host_cpus')} vs {b.get('host_cpus')} cores: a busy machine and a quiet one")
  tflops = (peak.get("tflops"), base_peak.get("tflops"))
  if (same_dtype and a.get("cpu") == b.get("cpu") and all(finite(t) and t > 0 for t in tflops)
      and max(tflops) / min(tflops) > PEAK_APART):
    out.append(f"{tflops[0]:.3g} vs {tflops[1]:.3g} TFLOP/s on one CPU model "
               f"({max(tflops) / min(tflops):.2f}x apart; load average {a.get('load_avg_1m')} vs "
               f"{b.get('load_avg_1m')})")
  return out


def status_warnings(runs: list[Run]) -> list[str]:
  return [f"{r.label}: status is {r.summary.get('status', MISSING)!r}, not 'finished'; its numbers "
          f"cover only the steps it ran" for r in runs if r.summary.get("status") != "finished"]


def interval_rule(runs: list[Run]) -> str:
  if any(r.repeats for r in runs):
    over = ("over every timed step of every run of each (a sweep point's repeats drawn first, then "
            "their steps; a single run: its steps only)")
  else:
    over = ("over each run's timed steps, one run each: they leave out the noise from run to run "
            "(a sweep's `repeats`, compared as SWEEP/points/<id>, puts it in)")
  return (f"{intervals.CONFIDENCE:.0%} bootstrap intervals of the medians {over}; a ratio whose "
          "interval holds 100% is not distinguishable from parity")


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
def combined_summary(run: Run) -> dict:
  """summary.json, or for a sweep point's repeats, its step-time statistics over every run's timed
  steps and the median of the runs' MFU and TFLOP/s (the rest: the first run's)."""
  if not run.repeats:
    return run.summary
  s = dict(run.summary, **timing.summarize([t for times in step_time_sets(run) for t in times]))
  for key in ("mfu_median", "tflops_per_s_per_device_median"):
    values = [r.summary.get(key) for r in (run, *run.repeats) if finite(r.summary.get(key))]
    s[key] = statistics.median(values) if values else None
  return s


def _run_entry(base: Run, run: Run, tolerance: float, diff: list[dict], index: int) -> dict:
  s = combined_summary(run)
  tp, base_tp = throughput(base, run), throughput(base, base)
  mfu, mfu_unknown = mfu_text(dataclasses.replace(run, summary=s))
  agreement = loss_agreement(base, run, tolerance)
  return {
      "label": run.label, "path": os.path.abspath(run.path), "baseline": index == 0,
      "runs": tp["runs"],
      "status": s.get("status"), "steps": s.get("steps"), "timed_steps": s.get("timed_steps"),
      "backend": run.info.get("backend", s.get("backend")),
      "device_kind": run.info.get("device_kind", s.get("device_kind")),
      "n_devices": run.info.get("n_devices", s.get("n_devices")),
      "tokens_per_s_per_device": tp["tokens_per_s_per_device"], "throughput_ratio": tp["ratio"],
      "tokens_per_s_per_device_interval": tp["interval"] and tp["interval"].to_json(),
      "throughput_ratio_interval": tp["ratio_interval"] and tp["ratio_interval"].to_json(),
      "distinguishable": intervals.distinguishable(tp["ratio_interval"]),
      "step_time_p90_over_p10": tp["spread"], "noisy": tp["noisy"],
      "tflops_per_s_per_device": s.get("tflops_per_s_per_device_median"),
      "mfu": s.get("mfu_median") if finite(s.get("mfu_median")) else None, "mfu_text": mfu,
      "mfu_unknown_reason": mfu_unknown,
      "peak_tflops_per_device": lookup(run.info, "peak.tflops", s.get("peak_tflops_per_device")),
      "peak_source": lookup(run.info, "peak.source", s.get("peak_source")),
      "step_time_s_median": s.get("step_time_s_median"), "step_time_s_p10": s.get("step_time_s_p10"),
      "step_time_s_p90": s.get("step_time_s_p90"), "compile_s": s.get("compile_s"),
      "peak_memory_bytes_per_device": s.get("peak_memory_bytes_per_device"),
      "peak_memory_source": s.get("peak_memory_source"), "final_loss": s.get("final_loss"),
      "loss_agreement": None if index == 0 else agreement,
      "headline": None if index == 0 else headline(base, run, tp, agreement, base_tp),
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
          "interval_rule": interval_rule(runs),
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
    if not finite(e["step_time_s_p10"]):
      return "unknown"
    text = f"{fmt_seconds(e['step_time_s_p10'])} - {fmt_seconds(e['step_time_s_p90'])}"
    return text + (f" ({e['noisy']})" if e["noisy"] else "")

  def tokens(e):
    interval = e["tokens_per_s_per_device_interval"]
    if interval is None:
      return fmt_count(e["tokens_per_s_per_device"])
    return intervals.count_text(intervals.Interval.from_json(interval))

  def ratio(e):
    interval = e["throughput_ratio_interval"]
    if e["baseline"] or interval is None:
      return fmt_pct(e["throughput_ratio"], 0 if e["baseline"] else 1)
    return intervals.ratio_words(intervals.Interval.from_json(interval))

  confidence = f"{intervals.CONFIDENCE:.0%}"
  rows = [
      ("status", lambda e: f"{e['status']} ({e['steps']} steps, {e['timed_steps']} timed)"
                           + (f", {e['runs']} runs" if e["runs"] > 1 else "")),
      ("device", lambda e: f"{e['n_devices']} x {e['device_kind']} ({e['backend']})"),
      (f"tokens/s/device ({confidence} interval)", tokens),
      (f"vs baseline ({confidence} interval)", ratio),
      ("MFU", lambda e: e["mfu_text"]),
      ("step time median", lambda e: fmt_seconds(e["step_time_s_median"])),
      ("step time p10 - p90", spread),
      ("compile", lambda e: fmt_seconds(e["compile_s"])),
      ("peak memory/device", lambda e: fmt_bytes(e["peak_memory_bytes_per_device"])),
      ("final loss", lambda e: f"{e['final_loss']:.4f}" if finite(e["final_loss"]) else "unknown"),
      ("loss vs baseline", _loss_cell),
  ]
  return [header] + [[name] + [cell(e) for e in runs] for name, cell in rows]


def diff_rows(result: dict) -> list[list[str]]:
  header = ["what differs"] + [e["label"] for e in result["runs"]]
  return [header] + [[row["key"]] + [fmt_value(v) for v in row["values"]] for row in result["diff"]]


def format_terminal(result: dict) -> str:
  parts = []
  if result["warnings"]:
    parts.append(f"!! {len(result['warnings'])} comparability warning(s), printed on stderr: these "
                 "runs do not measure the same thing")
  parts += [text_table(table_rows(result)), ""]
  parts += result["headlines"] + [f"(intervals: {result['interval_rule']})",
                                  f"(loss curves: {result['loss_rule']})", ""]
  if result.get("collectives"):
    parts += [text_table(collectives_rows(result["collectives"])), COLLECTIVES_NOTE]
    parts += [e["note"] for e in result["collectives"]["runs"] if e["note"]] + [""]
  if result["diff"]:
    parts.append(text_table(diff_rows(result)))
  else:
    parts.append("what differs: nothing recorded differs between the runs")
  return "\n".join(parts)


def format_markdown(result: dict) -> str:
  parts = ["# jaxbench compare", ""]
  if result["warnings"]:
    parts += ["## WARNING: not comparable", ""]
    parts += [f"- **WARNING** {md_cell(w)}" for w in result["warnings"]] + [""]
  parts += ["## Summary", ""]
  parts += [f"- {h}" for h in result["headlines"]]
  parts += ["", f"Intervals: {result['interval_rule']}.", f"Loss curves: {result['loss_rule']}.",
            "", "## Runs", "",
            md_table(table_rows(result)), ""]
  # Where each number came from: the run folder, and what its peak memory counts (a GPU's
  # allocator peak and a CPU process's RSS are not the same measure).
  paths = [f"- {e['label']}: `{e['path']}`; peak memory: {md_cell(str(e['peak_memory_source']))}"
           for e in result["runs"]]
  unknown = [f"- MFU of {e['label']} is unknown: {md_cell(e['mfu_unknown_reason'])}"
             for e in result["runs"] if e["mfu_unknown_reason"]]
  parts += paths + unknown
  if result.get("collectives"):
    parts += ["", "## Collectives", "", md_table(collectives_rows(result["collectives"])),
              "", COLLECTIVES_NOTE]
    parts += [f"- {md_cell(e['note'])}" for e in result["collectives"]["runs"] if e["note"]]
  parts += ["", "## What differs", ""]
  parts.append(md_table(diff_rows(result)) if result["diff"]
               else "Nothing recorded differs between the runs.")
  if result["plots"]:
    parts += ["", "## Plots", ""] + [f"![{p}]({p})" for p in result["plots"]]
  return "\n".join(parts) + "\n"


# --- Plots -----------------------------------------------------------------------------------------
def plot_losses(runs: list[Run], tolerance: float, path: str) -> None:
  fig, (ax, rel_ax) = figure(2, 7)
  base = loss_by_step(runs[0].metrics)
  for i, run in enumerate(runs):
    # One colour per run in both panels; the baseline drawn wide underneath, so a run that matches
    # it exactly still shows both lines.
    style = {"color": f"C{i}", "linewidth": 3.0 if i == 0 else 1.2, "label": run.label}
    curve = sorted((s, v) for s, v in loss_by_step(run.metrics).items() if finite(v))
    ax.plot([s for s, _ in curve], [v for _, v in curve], **style)
    common = [(s, v) for s, v in curve if finite(base.get(s))]
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
  fig, (ax,) = figure(1, 4.5)
  data = [[t * 1e3 for t in timed_step_times(r)] for r in runs]
  positions = [i + 1 for i, d in enumerate(data) if d]
  if positions:
    ax.boxplot([d for d in data if d], positions=positions, showmeans=True)
  ax.set_xticks(range(1, len(runs) + 1),
                [f"{r.label}\n({len(d)} timed)" for r, d in zip(runs, data)])
  ax.set(ylabel="step time (ms)", title="Step times of the timed steps (warmup steps excluded)")
  fig.savefig(path, dpi=100)


def plot_throughput(result: dict, path: str) -> None:
  fig, (ax,) = figure(1, 4.5)
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
def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = cli.FlagParser(prog=argv[0] if argv else "jaxbench compare", add_help=False)
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
    return bad_input("jaxbench compare", e)
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
