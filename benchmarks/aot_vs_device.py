"""Deviceless compile against the device: are `jaxbench compile`'s figures the ones the GPU shows?

  python benchmarks/aot_vs_device.py --suite=SUITE_OUT [--targets=local.txtpb,h100] [--out=DIR]

Reads a finished GPU suite (benchmarks/gpu_suite.py: suite.json and its JAX run folders) and, for
each size whose JAX run finished, compiles exactly that run's configuration deviceless (as on a
laptop: JAX on the CPU, the GPU described by a target file) with `jaxbench compile --report`.
Then, side by side per size and target:

- memory per device: the deviceless buffer assignment (arguments + outputs - aliased + temporaries
  + code) against the same figure from the step compiled on the device (run.json) and against the
  run's measured peak (the allocator's peak_bytes_in_use, which includes the input pipeline's
  buffers and allocator rounding);
- time: the roofline lower bound against the measured median step time (their ratio says how far
  the step is from the bound), and the MFU bound against the measured MFU;
- compile time, deviceless against on the device.

Writes DIR/aot.md and DIR/aot.json (default DIR: SUITE_OUT/aot). The compiles run in parallel,
one process each, with a shared --timeout_s. Run on the GPU machine right after the suite (same
jax version), or anywhere later with a description the GPU machine wrote (`--describe_local`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
GIB = 2**30


def finished_jax_runs(suite: dict) -> list[dict]:
  """(size, flags, workdir) of each size's JAX run that finished at the size's final batch."""
  out = []
  for r in suite.get("results", []):
    for run in r.get("runs", []):
      if (run.get("framework") == "jax" and run.get("status") == "ok" and run.get("flags")
          and run.get("batch_size") == r.get("batch_size")):
        out.append({"size": r["size"], "batch_size": run["batch_size"], "flags": run["flags"],
                    "workdir": run["workdir"]})
  return out


def target_label(target: str) -> str:
  return os.path.splitext(os.path.basename(target))[0]


def compile_reports(jobs: dict[str, list[str]], timeout_s: float) -> dict[str, dict]:
  """`jaxbench compile FLAGS --report=STEM.json` for every {STEM: FLAGS} (STEM a path without a
  suffix; the log goes to STEM.log), all at once, one process each, JAX on the CPU so a GPU that
  is here stays free, under one shared timeout. {STEM: {"report": dict | None, "error": str |
  None}}: the report when one was written, else the end of the log."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
  procs = {}
  for stem, flags in jobs.items():
    log = open(stem + ".log", "w")
    cmd = [sys.executable, "-m", "jaxbench", "compile", *flags, f"--report={stem}.json",
           "--suggest=False"]  # the figures of these configs, not a search for one that fits
    procs[stem] = (log, subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log,
                                         stderr=subprocess.STDOUT))
  deadline = time.time() + timeout_s
  out = {}
  for stem, (log, proc) in procs.items():
    try:
      proc.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
    log.close()
    report = error = None
    if os.path.exists(stem + ".json"):
      with open(stem + ".json") as f:
        report = json.load(f)
    else:
      with open(stem + ".log") as f:
        tail = f.read().strip().splitlines()[-3:]
      error = f"exit {proc.returncode}: " + " | ".join(tail)
    out[stem] = {"report": report, "error": error}
  return out


def compile_all(jobs: list[dict], out: str, timeout_s: float) -> None:
  """Each (run, target) job compiled for its target; each job gets "report" and "error"."""
  stems = {}
  for job in jobs:
    stem = os.path.join(out, f"{job['size']}-{target_label(job['target'])}")
    stems[stem] = [*job["flags"], f"--target={job['target']}", "--topology=1x1x1"]
    job["stem"] = stem
  results = compile_reports(stems, timeout_s)
  for job in jobs:
    job.update(results[job["stem"]])


def compare_row(job: dict) -> dict:
  """One size x target: deviceless figures beside the device's."""
  from jaxbench import memory
  with open(os.path.join(job["workdir"], "run.json")) as f:
    run = json.load(f)
  with open(os.path.join(job["workdir"], "summary.json")) as f:
    summary = json.load(f)
  on_device = run.get("compile", {})
  rep = job.get("report") or {}
  mem, rf = rep.get("memory") or {}, rep.get("roofline") or {}
  row = {"size": job["size"], "batch_size": job["batch_size"], "target": target_label(job["target"]),
         "target_device": (rep.get("target") or {}).get("device"), "error": job.get("error"),
         "deviceless_compile_s": rep.get("compile_s"),
         "device_compile_s": on_device.get("compile_s"),
         "deviceless_bytes": mem.get("total_bytes"),
         "device_compiled_bytes": memory.xla_total(on_device.get("xla_memory_analysis") or {}),
         "measured_peak_bytes": summary.get("peak_memory_bytes_per_device"),
         "peak_source": summary.get("peak_memory_source"),
         "roofline_s": rf.get("step_time_lower_bound_s"), "bound_by": rf.get("bound_by"),
         "mfu_bound": rf.get("mfu_upper_bound"),
         "step_s": summary.get("step_time_s_median"), "mfu": summary.get("mfu_median"),
         "device_kind": run.get("device_kind")}
  if rep and not rep.get("compiled", True):
    row["error"] = rep.get("error", "did not compile")[:300]
  return row


def _ratio(a, b):
  return None if not a or not b else a / b


def _f(x, spec, scale=1.0):
  return "-" if x is None else format(x * scale, spec)


def table(rows: list[dict]) -> str:
  lines = ["| size | batch | target | deviceless GiB | on-device compiled GiB | ratio | measured "
           "peak GiB | ratio | roofline ms | measured ms | measured / bound | MFU bound | MFU | "
           "compile s: deviceless / device |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in rows:
    if r.get("error"):
      lines.append(f"| {r['size']} | {r['batch_size']} | {r['target']} | failed: "
                   f"{r['error'][:200]} |" + " |" * 10)
      continue
    lines.append(
        f"| {r['size']} | {r['batch_size']} | {r['target']} | {_f(r['deviceless_bytes'], '.2f', 1 / GIB)} | "
        f"{_f(r['device_compiled_bytes'], '.2f', 1 / GIB)} | "
        f"{_f(_ratio(r['deviceless_bytes'], r['device_compiled_bytes']), '.3f')} | "
        f"{_f(r['measured_peak_bytes'], '.2f', 1 / GIB)} | "
        f"{_f(_ratio(r['deviceless_bytes'], r['measured_peak_bytes']), '.3f')} | "
        f"{_f(r['roofline_s'], '.1f', 1e3)} ({r['bound_by'] or '-'}) | {_f(r['step_s'], '.1f', 1e3)} | "
        f"{_f(_ratio(r['step_s'], r['roofline_s']), '.2f')} | {_f(r['mfu_bound'], '.1%')} | "
        f"{_f(r['mfu'], '.1%')} | {_f(r['deviceless_compile_s'], '.1f')} / "
        f"{_f(r['device_compile_s'], '.1f')} |")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--suite", required=True, help="a gpu_suite.py --out folder")
  p.add_argument("--targets", default=None,
                 help="comma-separated targets (default: SUITE/local.txtpb if present, and h100)")
  p.add_argument("--out", default=None)
  p.add_argument("--timeout_s", type=float, default=240)
  args = p.parse_args(argv)
  with open(os.path.join(args.suite, "suite.json")) as f:
    suite = json.load(f)
  targets = [t for t in (args.targets or "").split(",") if t]
  if not targets:
    local = os.path.join(args.suite, "local.txtpb")
    targets = ([local] if os.path.exists(local) else []) + ["h100"]
  out = os.path.abspath(args.out or os.path.join(args.suite, "aot"))
  os.makedirs(out, exist_ok=True)
  runs = finished_jax_runs(suite)
  if not runs:
    print("aot_vs_device: the suite has no finished JAX run to compare against", file=sys.stderr)
    return 1
  jobs = [{**run, "target": t} for run in runs for t in targets]
  t0 = time.time()
  compile_all(jobs, out, args.timeout_s)
  rows = [compare_row(j) for j in jobs]
  text = table(rows)
  with open(os.path.join(out, "aot.md"), "w") as f:
    f.write("# Deviceless compile against the device\n\n" + text + "\n")
  with open(os.path.join(out, "aot.json"), "w") as f:
    json.dump({"targets": targets, "rows": rows}, f, indent=2)
  print(text)
  print(f"aot_vs_device: {len(jobs)} compiles in {time.time() - t0:.0f}s; {out}/aot.md")
  return 0 if all(not r.get("error") for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
