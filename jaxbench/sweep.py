"""`jaxbench sweep`: a grid of training runs, each in its own process; resumable.

  jaxbench sweep --sweep=configs/sweeps/<name>.py --out=DIR [--dry_run] [--timeout_s=S]
                 [--repeats=N] [--max_batch] [--retry=timeout,crash,...]
                 [--compile_only=TARGET [--topology=PxHxD]]

A sweep file is plain Python with `get_sweep()` returning a dict:

  base       "configs/mpt.py:125m": the config file and preset every point starts from (required)
  fixed      {key: value}: overrides every point gets
  axes       {key: [values]}: the cartesian product of these ...
  zip        [{key: [values], key: [values]}, ...]: ... times each group, whose lists (of equal
             length) advance together
  timeout_s  seconds a point may run (default 3600; --timeout_s replaces it)
  max_batch  False, True or {"steps": 3, "limit": 64, "timeout_s": S}: see below
  compile_only  False, a target (h100, a100, a100-40, mi300x, mi250x, mi250, PATH.txtpb) or
             {"target": ..., "topology": "1x1x8"}: see below (--compile_only / --topology replace it)
  repeats    runs of each point (default 1; --repeats replaces it): see below

A key is a config key (`batch_size`, `model.remat`, `mesh.fsdp`, `framework`, ...), `preset` (the
preset of `base`'s config file), `config` (another `file.py:preset`), `env.NAME` (an environment
variable of the point's process, e.g. `env.XLA_FLAGS`; None unsets it) or `timeout_s` (this point's
own limit). The file and every key are checked before anything runs (exit 2, one line).

Each point runs `jaxbench train` in a fresh process (a fresh XLA client, clean device memory) with
its timeout, in DIR/points/<id>/: `run/` is its run directory, `log.txt` its stdout and stderr. The
id is a readable prefix plus a hash of the point's overrides, so the same point keeps its id when
the sweep file grows. A point ends as ok, oom, compile_error, timeout, bad_config (exit 2),
diverged (exit 3) or crash, with the log's last lines; no point stops the others. As each point
ends, a line is appended to DIR/results.jsonl and DIR/results.csv and DIR/results.md are rewritten.
Rerunning the command skips every point with a line and runs the rest (e.g. the one a killed sweep
was running); --retry=STATUS[,STATUS] also runs again the points that ended so (the last line for
a point wins). SIGINT/SIGTERM stop the current point and the sweep; the point is run again next time.

--repeats=N: each point runs N times, interleaved: every point once, then every point a second
time, and so on (A B A B, not A A B B), so that a machine's drift over the sweep (a slow spell,
another job starting) falls on every point alike. The first run of a point is DIR/points/<id>/run
(log.txt), the k-th run-k (log-k.txt); each has its own line in results.jsonl (`repeat`: k). The
point's id does not change, so raising repeats later runs only the new ones. `jaxbench report`
gives each point's median over all its runs' timed steps, with an interval over repeats and steps.

--max_batch: per point, the largest global batch_size that fits, among multiples of the point's own
batch_size (so set it to the smallest valid batch, e.g. 1 per device): short runs (`steps`, default
3) at 1x, 2x, 4x, ... until one runs out of memory (or reaches `limit` x, default 64), then
bisection between the last that fit and the first that did not; the trail goes to
DIR/points/<id>/max_batch.jsonl (kept across resumes) and results.jsonl, and the point then runs
at the batch found. A point whose smallest batch does not fit ends as oom.

--compile_only=TARGET: every point is `jaxbench compile` for that GPU, NVIDIA or AMD, instead of a
training run (no GPU needed: see `jaxbench compile --help`): ok when the step compiles and fits the
target's memory, oom when it compiles and does not ("short by" in the reason), compile_error when
XLA rejects it. results.jsonl then holds XLA's per-device memory (peak_memory_bytes_per_device, named by
peak_memory_source), fits, short_by_bytes, step_time_lower_bound_s and mfu_upper_bound. With
--max_batch the search runs deviceless too: the largest batch that fits an H100 or an MI250X GCD,
found on a laptop.
"""

from __future__ import annotations

import argparse
import collections
import csv
import ctypes
import datetime
import fcntl
import io
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time

from jaxbench import cli
from jaxbench import config as config_lib
from jaxbench import rundir as rundir_lib
from jaxbench import timing
from jaxbench.errors import BadInput, bad_input
from jaxbench.outcome import STATUSES, classify, error_tail
from jaxbench.sweepfile import Point, Sweep, build, get_path, override_keys
from jaxbench.tables import fmt_bytes, fmt_count, fmt_pct, fmt_seconds, md_cell

# summary.json fields copied into results.jsonl.
SUMMARY_FIELDS = ("tokens_per_s_per_device_median", "mfu_median", "step_time_s_median", "compile_s",
                  "peak_memory_bytes_per_device", "final_loss", "n_params", "backend",
                  "device_kind", "n_devices")
# compile_only points: what `jaxbench compile` found, beside SUMMARY_FIELDS.
AOT_FIELDS = ("peak_memory_source", "fits", "short_by_bytes", "pool_bytes",
              "step_time_lower_bound_s", "mfu_upper_bound")
# run.json config fields copied into results.jsonl (what the point really ran).
CONFIG_FIELDS = ("framework", "family", "preset", "batch_size", "microbatches", "seq_len", "dtype")
# After SIGTERM (a clean stop at the next step boundary), a point gets this long before SIGKILL.
TERM_GRACE_S = 10.0


# --- Running a point ----------------------------------------------------------------------------
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
  """In the child before exec: the kernel kills it if the sweep dies (kill -9 included), so a
  killed sweep leaves no point running on the device."""
  try:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
  except (OSError, AttributeError):
    pass


def _package_root() -> str:
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_env(point_env: dict) -> dict:
  env = dict(os.environ)
  # The points import the same jaxbench as this process, installed or not.
  env["PYTHONPATH"] = os.pathsep.join(p for p in (_package_root(), env.get("PYTHONPATH")) if p)
  env["PYTHONUNBUFFERED"] = "1"
  for name, value in point_env.items():
    if value is None:
      env.pop(name, None)
    else:
      env[name] = value
  return env


def train_command(point: Point, workdir: str, extra_args=()) -> list[str]:
  """The point's `jaxbench train`; `extra_args` (--config.KEY=VALUE) replace the point's own."""
  replaced = {a.split("=", 1)[0] for a in extra_args}
  own = [a for a in point.config_args if a.split("=", 1)[0] not in replaced]
  return [sys.executable, "-m", "jaxbench", "train", f"--config={point.spec}", *own, *extra_args,
          f"--workdir={workdir}"]


class Stopped(Exception):
  """SIGINT/SIGTERM to the sweep: the current point was stopped and is not recorded."""


class Runner:
  """Runs one process at a time, so a stop request can reach it; shows progress while waiting."""

  def __init__(self, display):
    self.display = display
    self.proc = None
    self.stop_signal = None

  def handle(self, signum, frame):
    self.stop_signal = signal.Signals(signum).name
    if self.proc is not None and self.proc.poll() is None:
      _signal_group(self.proc, signal.SIGTERM)

  def run(self, cmd: list[str], env: dict, log_path: str, timeout_s: float, label: str,
          cwd: str | None = None) -> dict:
    """cmd in a session of its own, its output in log_path; past timeout_s (or on a stop request)
    SIGTERM, a clean stop that writes summary.json, then SIGKILL after TERM_GRACE_S.
    {"returncode", "timed_out", "log" (its text), "duration_s"}; Stopped on a stop request."""
    if self.stop_signal:
      raise Stopped(self.stop_signal)
    start = time.monotonic()
    with open(log_path, "w") as log:
      log.write("$ " + " ".join(cmd) + "\n")
      log.flush()
      self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                   start_new_session=True, preexec_fn=_die_with_parent)
    timed_out, kill_at = False, None
    try:
      while True:
        try:
          self.proc.wait(timeout=1.0)
          break
        except subprocess.TimeoutExpired:
          pass
        now = time.monotonic()
        timed_out = timed_out or now - start > timeout_s
        if (timed_out or self.stop_signal) and kill_at is None:
          _signal_group(self.proc, signal.SIGTERM)  # a clean stop writes summary.json
          kill_at = now + TERM_GRACE_S
        if kill_at is not None and now > kill_at:
          _signal_group(self.proc, signal.SIGKILL)
        self.display.tick(label, now - start)
    finally:
      if self.proc.poll() is None:  # an exception here: leave nothing running
        _signal_group(self.proc, signal.SIGKILL)
        self.proc.wait()
    rc, self.proc = self.proc.returncode, None
    if self.stop_signal and not timed_out:
      raise Stopped(self.stop_signal)
    with open(log_path, errors="replace") as f:
      text = f.read()
    return {"returncode": rc, "timed_out": timed_out, "log": text,
            "duration_s": time.monotonic() - start}


def _signal_group(proc, sig) -> None:
  try:
    os.killpg(proc.pid, sig)
  except (ProcessLookupError, PermissionError):
    pass


def _read_json_or_none(path: str) -> dict | None:
  try:
    return rundir_lib.read_json(path)
  except (OSError, ValueError):
    return None


def _read_summary(run_dir: str) -> dict | None:
  return _read_json_or_none(os.path.join(run_dir, "summary.json"))


def _read_run_config(run_dir: str) -> dict:
  try:
    return rundir_lib.read_json(os.path.join(run_dir, "run.json")).get("config", {})
  except (OSError, ValueError):
    return {}


def compile_command(point: Point, report_path: str, aot: dict, extra_args=()) -> list[str]:
  """The point's `jaxbench compile` for the sweep's target (compile_only): nothing runs."""
  cmd = train_command(point, "-", extra_args)[:-1]  # without --workdir
  cmd[3] = "compile"
  # The sweep's own max_batch search decides what fits: no search for a change per point.
  cmd += [f"--target={aot['target']}", f"--report={report_path}", "--suggest=False"]
  if aot.get("topology"):
    cmd.append(f"--topology={aot['topology']}")
  return cmd


def compile_summary(report: dict | None) -> dict | None:
  """The results fields of a compile-only point, from `jaxbench compile --report`. Memory is XLA's
  buffer assignment for the target (nothing ran), named so in peak_memory_source."""
  if not report:
    return None
  memory, roofline = report.get("memory") or {}, report.get("roofline") or {}
  target = report.get("target") or {}
  return {"status": "compiled" if report.get("compiled") else "not compiled",
          "compile_s": (report.get("lower_s") or 0.0) + (report.get("compile_s") or 0.0),
          "n_params": report.get("n_params"), "backend": target.get("platform"),
          "device_kind": target.get("device"), "n_devices": report.get("n_devices"),
          "peak_memory_bytes_per_device": memory.get("total_bytes"),
          "peak_memory_source": (f"XLA buffer assignment of the step compiled for "
                                 f"{target.get('device')} (compile_only: nothing ran)"),
          "fits": memory.get("fits"), "short_by_bytes": memory.get("short_by_bytes"),
          "fits_with_next_step": memory.get("fits_with_next_step"),
          "with_next_step_bytes": memory.get("with_next_step_bytes"),
          "pool_bytes": memory.get("pool_bytes"),
          "step_time_lower_bound_s": roofline.get("step_time_lower_bound_s"),
          "mfu_upper_bound": roofline.get("mfu_upper_bound"),
          "config": {"framework": "jax", **(report.get("config") or {})}}


def classify_compile(returncode, log: str, timed_out: bool, summary: dict | None) -> tuple[str, str]:
  """A compile-only point: ok when the step compiled and fits the target with room for the next
  step's temporaries (see compile.memory_report), oom when it compiled and does not, compile_error
  when the compiler rejected it."""
  from jaxbench import compile as compile_lib
  verdicts = (compile_lib.EXIT_FITS, compile_lib.EXIT_TIGHT, compile_lib.EXIT_DOES_NOT_FIT)
  if returncode in verdicts and summary and summary["status"] == "compiled":
    if summary["fits"] is False:
      return "oom", (f"does not fit {summary['device_kind']}: short by "
                     f"{summary['short_by_bytes'] / 2**30:.2f} GiB")
    if summary.get("fits_with_next_step") is False:
      return "oom", (f"one step fits {summary['device_kind']}, but not with the next step's "
                     f"temporaries beside it ({summary['with_next_step_bytes'] / 2**30:.2f} GiB "
                     f"of a {summary['pool_bytes'] / 2**30:.2f} GiB pool): such steps ran out of memory "
                     "at step 2 on an H200")
    return "ok", "compiled, fits" if summary["fits"] else "compiled"
  if returncode == 1 and not timed_out:
    return "compile_error", "the compiler rejected the step"
  return classify(returncode, log, timed_out, {"status": "finished"} if returncode == 0 else None)


def run_once(runner: Runner, point: Point, workdir: str, log_path: str, timeout_s: float,
             label: str, extra_args=(), aot: dict | None = None) -> dict:
  """One `jaxbench train` of the point (or with `aot`, one `jaxbench compile` for that target);
  its status, reason and error tail."""
  if os.path.exists(workdir) and not rundir_lib.has_checkpoint(workdir):
    shutil.rmtree(workdir)  # an unfinished attempt without checkpoints: start it over
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  if aot:
    os.makedirs(workdir, exist_ok=True)
    report_path = os.path.join(workdir, "compile.json")
    out = runner.run(compile_command(point, report_path, aot, extra_args), child_env(point.env),
                     log_path, timeout_s, label)
    summary = compile_summary(_read_json_or_none(report_path))
    status, reason = classify_compile(out["returncode"], out["log"], out["timed_out"], summary)
    error = None if status == "ok" else reason if status == "oom" else error_tail(out["log"])
    return {"status": status, "reason": reason, "returncode": out["returncode"],
            "duration_s": out["duration_s"], "summary": summary, "error": error}
  out = runner.run(train_command(point, workdir, extra_args), child_env(point.env), log_path,
                   timeout_s, label)
  summary = _read_summary(workdir)
  status, reason = classify(out["returncode"], out["log"], out["timed_out"], summary)
  return {"status": status, "reason": reason, "returncode": out["returncode"],
          "duration_s": out["duration_s"], "summary": summary,
          "error": None if status == "ok" else error_tail(out["log"])}


def search_batch(probe, start: int, limit: int,
                 bisect: bool = True) -> tuple[int | None, list[dict]]:
  """The largest multiple n (1 <= n <= limit) of the unit batch for which probe(n) is "ok": n
  doubles until a probe fails, then bisection between the last that fit and the first that did
  not (bisect=False: none, the largest start * 2**k that fits). `probe(n)` returns a status;
  anything but "ok" counts as does-not-fit (the trail records which). Returns (n or None when
  even `start` fails, the trail in probe order)."""
  trail = []

  def fits(n: int) -> bool:
    status = probe(n)
    trail.append({"multiple": n, "status": status})
    return status == "ok"

  if not fits(start):
    return None, trail
  good, bad = start, None
  while bad is None:
    nxt = min(good * 2, limit)
    if nxt == good:
      return good, trail
    if fits(nxt):
      good = nxt
    else:
      bad = nxt
  while bisect and bad - good > 1:
    mid = (good + bad) // 2
    if fits(mid):
      good = mid
    else:
      bad = mid
  return good, trail


def max_batch_point(runner: Runner, point: Point, point_dir: str, options: dict, label: str,
                    aot: dict | None = None) -> dict:
  """The search of --max_batch for one point; probes already run (in max_batch.jsonl) are reused."""
  unit = int(_config_value(point, "batch_size"))
  trail_path = os.path.join(point_dir, "max_batch.jsonl")
  done = {}
  if os.path.exists(trail_path):
    done = {r["batch_size"]: r for r in rundir_lib.read_metrics(trail_path) if "batch_size" in r}
  timeout = float(options.get("timeout_s") or point.timeout_s)
  steps = int(options["steps"])
  records = []

  def probe(n: int) -> str:
    batch = n * unit
    if batch in done:
      records.append(done[batch])
      return done[batch]["status"]
    workdir = os.path.abspath(os.path.join(point_dir, "max_batch", f"bs{batch}"))
    args = [f"--config.batch_size={batch}", f"--config.steps={steps}",
            "--config.warmup_steps_excluded=1", "--config.log_every=0",
            "--config.checkpoint.every=0", "--config.eval.every=0", "--config.tensorboard=False"]
    r = run_once(runner, point, workdir, workdir + ".log", timeout, f"{label} max_batch bs={batch}",
                 args, aot)
    s = r["summary"] or {}
    record = {"batch_size": batch, "status": r["status"], "reason": r["reason"],
              "duration_s": round(r["duration_s"], 2),
              "peak_memory_bytes_per_device": s.get("peak_memory_bytes_per_device"),
              "tokens_per_s_per_device_median": s.get("tokens_per_s_per_device_median")}
    rundir_lib.append_json_line(trail_path, record)
    records.append(record)
    runner.display.note(f"    max_batch: batch_size {batch}: {r['status']}")
    return r["status"]

  os.makedirs(point_dir, exist_ok=True)
  found, _ = search_batch(probe, 1, int(options["limit"]))
  return {"unit": unit, "limit": int(options["limit"]) * unit, "steps": steps,
          "batch_size": None if found is None else found * unit, "trail": records}


def _config_value(point: Point, key: str):
  if key in point.overrides:
    return point.overrides[key]
  return get_path(config_lib.load_config_file(point.spec), key)


def repeat_paths(point_dir: str, repeat: int) -> tuple[str, str]:
  """A point's run directory and log of its `repeat`-th run: run/ and log.txt for the first (as
  before repeats), run-k/ and log-k.txt for the k-th."""
  if repeat == 1:
    return os.path.join(point_dir, "run"), os.path.join(point_dir, "log.txt")
  return os.path.join(point_dir, f"run-{repeat}"), os.path.join(point_dir, f"log-{repeat}.txt")


def run_point(runner: Runner, point: Point, out_dir: str, options: dict | None, label: str,
              aot: dict | None = None, repeat: int = 1) -> dict:
  point_dir = os.path.join(out_dir, "points", point.id)
  os.makedirs(point_dir, exist_ok=True)
  workdir, log_path = repeat_paths(point_dir, repeat)
  workdir = os.path.abspath(workdir)
  started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  result = {"id": point.id, "index": point.index, "repeat": repeat, "overrides": point.overrides,
            "config": point.spec, "started_at": started,
            "run_dir": os.path.relpath(workdir, out_dir), "log": os.path.relpath(log_path, out_dir)}
  if point.problem:
    with open(log_path, "w") as f:
      f.write(f"not run: {point.problem}\n")
    return {**result, "status": "bad_config", "reason": "rejected before running",
            "error": point.problem, "returncode": None, "duration_s": 0.0}
  extra = []
  if options is not None:
    search = max_batch_point(runner, point, point_dir, options, label, aot)
    result["max_batch"] = search
    if search["batch_size"] is None:
      first = search["trail"][0] if search["trail"] else {}
      status = first.get("status", "crash")
      reason = f"max_batch: the smallest batch ({search['unit']}) did not run: " + first.get(
          "reason", "")
      tail = reason
      log = os.path.join(point_dir, "max_batch", f"bs{search['unit']}.log")
      if os.path.exists(log):
        with open(log, errors="replace") as f:
          tail = error_tail(f.read())
      return {**result, "status": status, "reason": reason, "error": tail, "returncode": None,
              "duration_s": 0.0}
    extra = [f"--config.batch_size={search['batch_size']}"]
  r = run_once(runner, point, workdir, log_path, point.timeout_s, label, extra, aot)
  result.update(status=r["status"], reason=r["reason"], returncode=r["returncode"],
                duration_s=round(r["duration_s"], 2), error=r["error"])
  summary = r["summary"] or {}
  for key in SUMMARY_FIELDS:
    result[key] = summary.get(key)
  if aot:
    result["compile_only"] = aot
    for key in AOT_FIELDS:
      result[key] = summary.get(key)
  config = summary.get("config", {}) if aot else _read_run_config(workdir)
  for key in CONFIG_FIELDS:
    result[key] = config.get(key)
  result["finished_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  return result


# --- Results --------------------------------------------------------------------------------------
def result_key(r: dict) -> tuple[str, int]:
  """(id, repeat) of a result line: lines written before repeats are the first run."""
  return r["id"], r.get("repeat") or 1


def read_results(out_dir: str) -> dict[tuple[str, int], dict]:
  """(id, repeat) -> the last result line for it (a torn last line, from a kill mid-write, is
  ignored)."""
  path = os.path.join(out_dir, "results.jsonl")
  if not os.path.exists(path):
    return {}
  return {result_key(r): r for r in rundir_lib.read_metrics(path)
          if isinstance(r, dict) and "id" in r}


def schedule(points: list[Point], repeats: int) -> list[tuple[Point, int]]:
  """Every (point, repeat) in the order they run: every point's first run, then every point's
  second, ... (A B A B, not A A B B), so drift over the sweep falls on every point alike. A point
  rejected before running (bad_config) runs once."""
  return [(p, k) for k in range(1, repeats + 1) for p in points if k == 1 or not p.problem]


def append_result(out_dir: str, result: dict) -> None:
  rundir_lib.append_json_line(os.path.join(out_dir, "results.jsonl"), result)


TABLE_FIELDS = ("status", "tokens_per_s_per_device_median", "mfu_median", "step_time_s_median",
                "compile_s", "peak_memory_bytes_per_device", "final_loss", "n_params", "batch_size",
                "backend", "device_kind", "n_devices", "duration_s", "run_dir")


def write_csv(out_dir: str, points: list[Point], results: dict, repeats: int = 1) -> None:
  keys = override_keys(points)
  buf = io.StringIO()
  w = csv.writer(buf)
  # A field that is also an override (batch_size) is what the point ran with: named apart.
  w.writerow(["id", "repeat", *keys, *(f"run_{f}" if f in keys else f for f in TABLE_FIELDS),
              "max_batch", "error"])
  for p, repeat in sorted(schedule(points, repeats), key=lambda pr: (pr[0].index, pr[1])):
    r = results.get((p.id, repeat))
    if r is None:
      continue
    error = (r.get("error") or "").splitlines()
    search = (r.get("max_batch") or {}).get("batch_size")
    w.writerow([p.id, repeat, *(p.overrides.get(k, "") for k in keys),
                *("" if r.get(f) is None else r.get(f) for f in TABLE_FIELDS),
                "" if search is None else search, error[-1] if error else ""])
  _write_text(os.path.join(out_dir, "results.csv"), buf.getvalue())


def _write_text(path: str, text: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def format_results_md(sweep: Sweep, results: dict) -> str:
  keys = sweep.varying
  head = ["#", *keys, "status", "tokens/s/device", "MFU", "step time", "compile", "peak memory",
          "final loss", "point"]
  rows = []
  for p, repeat in sorted(schedule(sweep.points, sweep.repeats),
                          key=lambda pr: (pr[0].index, pr[1])):
    r = results.get((p.id, repeat))
    number = f"{p.index}" if sweep.repeats == 1 else f"{p.index} ({repeat}/{sweep.repeats})"
    if r is None:
      rows.append([number, *(md_cell(p.overrides.get(k, "")) for k in keys), "pending",
                   *[""] * 6, p.id])
      continue
    status = r["status"]
    if r.get("max_batch") and r["max_batch"].get("batch_size"):
      status += f" (max batch {r['max_batch']['batch_size']})"
    loss = r.get("final_loss")
    rows.append([number, *(md_cell(p.overrides.get(k, "")) for k in keys), status,
                 fmt_count(r.get("tokens_per_s_per_device_median")), fmt_pct(r.get("mfu_median")),
                 fmt_seconds(r.get("step_time_s_median")), fmt_seconds(r.get("compile_s")),
                 fmt_bytes(r.get("peak_memory_bytes_per_device")),
                 f"{loss:.4f}" if isinstance(loss, float) else "", f"`{p.id}`"])
  runs = schedule(sweep.points, sweep.repeats)
  done = sum((p.id, repeat) in results for p, repeat in runs)
  progress = (f"{done}/{len(sweep.points)} points done" if sweep.repeats == 1 else
              f"{done}/{len(runs)} runs done ({len(sweep.points)} points x {sweep.repeats} "
              "repeats, interleaved)")
  lines = [f"# Sweep {os.path.basename(sweep.path)}", "",
           f"Base config `{sweep.base}`; {progress}.",
           "Every point: " + (", ".join(
               f"`{k}={v}`" for k, v in sweep.points[0].overrides.items()
               if k not in sweep.varying) or "no fixed overrides") + ".", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  failed = [(p, repeat, results[(p.id, repeat)]) for p, repeat in runs
            if (p.id, repeat) in results and results[(p.id, repeat)]["status"] != "ok"]
  if failed:
    lines += ["", "## Failures", ""]
    for p, repeat, r in failed:
      last = (r.get("error") or "").splitlines()
      which = f" (run {repeat})" if sweep.repeats > 1 else ""
      lines.append(f"- `{p.id}`{which}: **{r['status']}** ({md_cell(r.get('reason', ''))})"
                   + (f": `{md_cell(last[-1])[:300]}`" if last else ""))
  return "\n".join(lines) + "\n"


def write_tables(out_dir: str, sweep: Sweep, results: dict) -> None:
  write_csv(out_dir, sweep.points, results, sweep.repeats)
  _write_text(os.path.join(out_dir, "results.md"), format_results_md(sweep, results))


# --- Progress ---------------------------------------------------------------------------------------
class Display:
  """Progress on stderr: one line rewritten in place on a terminal, plain lines otherwise."""

  def __init__(self, total: int, stream=None):
    self.stream = stream or sys.stderr
    self.tty = self.stream.isatty()
    self.total = total
    self.done = 0
    self.start = time.monotonic()
    self.run_times = []  # points run by this invocation, for the ETA
    self._live = False

  def eta(self, running_s: float = 0.0) -> str:
    left = self.total - self.done
    if not self.run_times or not left:
      return "?" if left else "0s"
    mean = sum(self.run_times) / len(self.run_times)
    return timing.format_duration(max(mean * left - running_s, 0.0))

  def _status(self) -> str:
    return (f"[{self.done}/{self.total} done, elapsed "
            f"{timing.format_duration(time.monotonic() - self.start)}")

  def _clear(self) -> None:
    if self._live:
      self.stream.write("\r\033[K")
      self._live = False

  def note(self, text: str) -> None:
    self._clear()
    print(text, file=self.stream, flush=True)

  def begin(self, label: str) -> None:
    self.note(f"{self._status()}, ETA {self.eta()}] running {label}")

  def tick(self, label: str, running_s: float) -> None:
    if not self.tty:
      return
    self.stream.write(f"\r\033[K{self._status()}, ETA {self.eta(running_s)}] {label} "
                      f"{timing.format_duration(running_s)}")
    self.stream.flush()
    self._live = True

  def end(self, label: str, result: dict, ran: bool) -> None:
    self.done += 1
    if ran:
      self.run_times.append(result.get("duration_s") or 0.0)
    tail = ""
    if result["status"] != "ok" and result.get("error"):
      tail = ": " + result["error"].splitlines()[-1][:160]
    elif result.get("tokens_per_s_per_device_median"):
      tail = f": {result['tokens_per_s_per_device_median']:,.0f} tokens/s/device"
    self.note(f"{self._status()}, ETA {self.eta()}] {label} -> {result['status']}{tail}")


def describe_point(p: Point) -> str:
  parts = [f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in p.overrides.items()]
  return ", ".join(parts) or "(base config)"


# --- `jaxbench sweep` --------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = cli.FlagParser(prog=argv[0] if argv else "jaxbench sweep", add_help=False)
  parser.add_argument("--sweep", required=True)
  parser.add_argument("--out", default=None)
  parser.add_argument("--dry_run", action="store_true")
  parser.add_argument("--timeout_s", type=float, default=None)
  parser.add_argument("--max_batch", action="store_true")
  parser.add_argument("--retry", default="")
  parser.add_argument("--compile_only", default=None)
  parser.add_argument("--topology", default=None)
  parser.add_argument("--repeats", type=int, default=None)
  args = parser.parse_args(argv[1:])
  args.retry = tuple(s for s in args.retry.split(",") if s)
  for status in args.retry:
    if status not in STATUSES or status == "ok":
      raise BadInput(f"--retry: {status!r} is not a failure status; allowed: "
                     f"{', '.join(STATUSES[1:])}")
  if args.timeout_s is not None and not args.timeout_s > 0:
    raise BadInput(f"--timeout_s must be > 0, got {args.timeout_s}")
  if args.out is None and not args.dry_run:
    raise BadInput("--out=DIR is required (the points' run directories and results go there)")
  if args.out is not None and os.path.exists(args.out) and not os.path.isdir(args.out):
    raise BadInput(f"--out={args.out} exists and is not a directory")
  return args


def _state(results: dict, p: Point, repeats: int, retry) -> str:
  """What a dry run says of a point: each of its runs' state, the same ones counted together."""
  states = []
  for repeat in range(1, repeats + 1):
    r = results.get((p.id, repeat))
    if r and r["status"] in retry:
      states.append(f"to run again (was {r['status']})")
    elif r:
      states.append(f"done: {r['status']}")
    else:
      states.append("bad_config: " + p.problem if p.problem else "to run")
  if repeats == 1:
    return states[0]
  counts = collections.Counter(states)
  return ", ".join(f"{n} {state}" for state, n in counts.items())


def dry_run(sweep: Sweep, results: dict, retry=()) -> None:
  print(f"sweep {sweep.path}: {len(sweep.points)} points, base {sweep.base}"
        + (f", {sweep.repeats} runs of each, interleaved" if sweep.repeats > 1 else "")
        + (f", max_batch search {sweep.max_batch}" if sweep.max_batch else "")
        + (f", compile only for {sweep.compile_only['target']}" if sweep.compile_only else ""))
  for p in sweep.points:
    state = _state(results, p, 1 if p.problem else sweep.repeats, retry)
    env = " ".join(f"{k}={shlex.quote(v)}" if v is not None else f"(unset {k})"
                   for k, v in p.env.items())
    print(f"  [{p.index}] {p.id}  ({state}; timeout {timing.format_duration(p.timeout_s)})")
    print(f"      {describe_point(p)}")
    aot = sweep.compile_only
    command = "jaxbench compile" if aot else "jaxbench train"
    args = [f"--config={p.spec}", *p.config_args]
    if aot:
      args += [f"--target={aot['target']}"] + ([f"--topology={aot['topology']}"] if aot["topology"] else [])
    print(f"      {env + ' ' if env else ''}{command} " + " ".join(shlex.quote(a) for a in args))


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  if cli.asks_for_help(argv):
    print(__doc__.strip())
    return 0
  try:
    args = parse_args(argv)
    sweep = build(args.sweep, args.timeout_s, args.max_batch, args.compile_only, args.topology,
                  args.repeats)
  except BadInput as e:
    return bad_input("jaxbench sweep", e)
  results = read_results(args.out) if args.out else {}
  if args.dry_run:
    dry_run(sweep, results, args.retry)
    return 0
  try:
    rundir_lib.check_output_folder(args.out, "--out")
  except BadInput as e:
    return bad_input("jaxbench sweep", e)
  os.makedirs(args.out, exist_ok=True)
  lock = open(os.path.join(args.out, ".sweep.lock"), "w")
  try:  # held while the sweep runs; the kernel lets go of it however the process ends
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    lock.close()
    return bad_input("jaxbench sweep", f"--out={args.out}: another sweep is running there")
  results = read_results(args.out)  # again, now that no other sweep writes it
  runs = schedule(sweep.points, sweep.repeats)
  todo = [(p, k) for p, k in runs
          if (p.id, k) not in results or results[(p.id, k)]["status"] in args.retry]
  what = "points" if sweep.repeats == 1 else f"runs ({len(sweep.points)} points x {sweep.repeats})"
  display = Display(len(runs))
  display.done = len(runs) - len(todo)
  display.note(f"jaxbench sweep: {len(runs)} {what}, {display.done} already done, "
               f"{len(todo)} to run; results in {os.path.abspath(args.out)}")
  runner = Runner(display)
  previous = {sig: signal.signal(sig, runner.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
  write_tables(args.out, sweep, results)
  try:
    for p, repeat in todo:
      label = f"[{p.index}] {p.id}" + (f" (run {repeat}/{sweep.repeats})" if sweep.repeats > 1 else "")
      first = results.get((p.id, 1))
      if repeat > 1 and (first or {}).get("status") != "ok":
        # A point that did not run once (oom, bad_config, ...) is not run again to no end: its
        # first run's line says why; a --retry that makes it pass brings its repeats back.
        display.total -= 1
        display.note(f"{label}: not run: its first run ended {(first or {}).get('status')}")
        continue
      display.begin(f"{label}: {describe_point(p)}")
      result = run_point(runner, p, args.out, sweep.max_batch, label, sweep.compile_only, repeat)
      append_result(args.out, result)
      results[(p.id, repeat)] = result
      write_tables(args.out, sweep, results)
      display.end(label, result, ran=bool(result.get("duration_s")))
  except Stopped as e:
    display.note(f"jaxbench sweep: {e} received: stopped; rerun the same command to resume "
                 f"({display.total - display.done} {what.split()[0]} left)")
    return 0
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
    lock.close()
  counts = collections.Counter(r["status"] for r in (results.get(key) for key in
                                                     ((p.id, k) for p, k in runs)) if r)
  display.note("jaxbench sweep: done: " + ", ".join(f"{n} {s}" for s, n in counts.items())
               + f"; {os.path.join(args.out, 'results.md')}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
