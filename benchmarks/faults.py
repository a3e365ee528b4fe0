"""Faults injected into real `jaxbench train` processes, and whether anything was lost or silently
changed: the long cases of issue #25 (the short ones are tests/test_faults.py).

  python benchmarks/faults.py [--kills=20] [--steps=300] [--every=10] [--seed=0] [--out=DIR]

1. kill -9 at random moments: one run of --steps steps, checkpointed every --every, is killed
   --kills times (just after a random step ahead: while training, saving or writing a line;
   or, one time in five, at a random moment of the start-up) and started again with the
   same command each time, then left to finish. Its metrics
   must equal an uninterrupted run's bitwise, every step exactly once.
2. two starts at once on one --workdir: exactly one may train; the other must exit 2.
3. a corrupted checkpoint (one flipped bit in the latest one's largest file) under a killed run:
   the restart must exit 2 naming it, never resume from it.

Prints a table: faults injected, runs resumed, steps trained again (the steps a kill cut off
after the last checkpoint), silent differences (the goal is 0), with the machine and versions,
for benchmarks/RESULTS.md. Not a test: it takes minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import common

from jaxbench import rundir


def command(workdir: str, steps: int, every: int) -> list[str]:
  return [sys.executable, "-m", "jaxbench", "train", "--config=configs/mpt.py:nano",
          f"--config.steps={steps}", f"--config.checkpoint.every={every}",
          "--config.warmup_steps_excluded=1", "--config.peak_tflops=1", "--config.log_every=0",
          f"--workdir={workdir}"]


def env() -> dict:
  return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": common.REPO}


def run(cmd, cwd) -> subprocess.CompletedProcess:
  return subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True, timeout=1800)


def records(workdir: str) -> list[tuple[int, float]]:
  path = os.path.join(workdir, "metrics.jsonl")
  return [(r["step"], r["loss"]) for r in rundir.read_metrics(path)] if os.path.exists(path) else []


def differences(got: list, want: list) -> int:
  """Steps missing, repeated or with another loss than the uninterrupted run's (bitwise)."""
  steps = [s for s, _ in got]
  missing_or_repeated = abs(len(steps) - len(set(steps))) + len(set(dict(want)) ^ set(steps))
  return missing_or_repeated + sum(dict(want).get(s) != loss for s, loss in got)


def start_step(stdout: str) -> int | None:
  """Where a start of the run took up: the checkpoint's step it resumed from, 0 when it trained
  from the first step, None when it was killed before it decided."""
  for line in stdout.splitlines():
    if "resuming from the checkpoint of step" in line:
      return int(line.split("step")[1].split()[0])
  return 0 if "compiling the train step" in stdout else None


def kill_at_random(tmp: str, reference: list, args) -> dict:
  rng = random.Random(args.seed)
  workdir = os.path.join(tmp, "killed")
  kills = resumes = again = 0

  def start():
    """Starts the run; returns (the process, the last step in metrics.jsonl before it)."""
    before = max((s for s, _ in records(workdir)), default=0)
    return subprocess.Popen(command(workdir, args.steps, args.every), cwd=tmp, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), before

  for i in range(args.kills):
    proc, before = start()
    # Where to kill: a random step ahead (the run then dies while training, saving or writing a
    # line, a moment after that step's line), or, one time in five, at a random moment of the
    # start-up (importing, compiling, restoring).
    if rng.random() < 0.2 or before >= args.steps:  # (metrics at the end: until a resume cuts them)
      target, moment = None, f"{rng.uniform(0.5, 8.0):.1f} s after the start"
      deadline = time.time() + float(moment.split()[0])
    else:  # spread over the run: about 2 * steps / kills steps after where it stood
      target = min(args.steps, before + rng.randint(1, max(1, 2 * args.steps // args.kills)))
      moment, deadline = f"after step {target}", time.time() + 1800
    while proc.poll() is None and time.time() < deadline:
      if target is not None and max((s for s, _ in records(workdir)), default=0) >= target:
        time.sleep(rng.uniform(0.0, 0.05))
        break
      time.sleep(0.01)
    if proc.poll() is not None:  # it finished first: nothing left to kill
      proc.communicate()
      print(f"  start {i + 1}: ended by itself (exit {proc.returncode})", flush=True)
      break
    reached = max((s for s, _ in records(workdir)), default=0)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate()
    kills += 1
    took_up = start_step(out)
    resumes += bool(took_up)
    again += max(0, before - took_up) if took_up is not None else 0
    print(f"  kill {kills} ({moment}): at step {reached}; this start took up at "
          f"{'step ' + str(took_up) if took_up is not None else '(killed before it decided)'}",
          flush=True)
  proc, before = start()
  out, err = proc.communicate()
  took_up = start_step(out)
  resumes += bool(took_up)
  again += max(0, before - took_up) if took_up is not None else 0
  got = records(workdir)
  summary = rundir.read_json(os.path.join(workdir, "summary.json"))
  return {"case": "kill -9 at random (a random step, or one time in five during start-up)",
          "faults": kills, "resumed": resumes, "trained_again": again, "exit": proc.returncode,
          "status": summary.get("status"), "steps": len(got),
          "silent_differences": differences(got, reference) + (proc.returncode != 0)}


def concurrent_starts(tmp: str, reference: list, args) -> dict:
  workdir = os.path.join(tmp, "concurrent")
  procs = [subprocess.Popen(command(workdir, args.steps, args.every), cwd=tmp, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  results = [p.communicate() + (p.returncode,) for p in procs]
  codes = sorted(code for _, _, code in results)
  refused = [err for _, err, code in results if code == 2 and "in use by another" in err]
  got = records(workdir)
  silent = differences(got, reference) + (codes != [0, 2]) + (len(refused) != 1)
  return {"case": "two starts at once on one --workdir", "faults": 1, "resumed": 0,
          "trained_again": 0, "exit": codes, "status": rundir.read_json(os.path.join(workdir, "summary.json")).get(
              "status"), "steps": len(got), "silent_differences": silent}


def corrupted_checkpoint(tmp: str, reference: list, args) -> dict:
  workdir = os.path.join(tmp, "corrupt")
  proc = subprocess.Popen(command(workdir, args.steps, args.every), cwd=tmp, env=env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  checkpoints = os.path.join(workdir, "checkpoints")
  deadline = time.time() + 600
  while time.time() < deadline and len([n for n in _listdir(checkpoints) if n.isdigit()]) < 2:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  latest = max(int(n) for n in os.listdir(checkpoints) if n.isdigit())
  path = max((os.path.join(root, name) for root, _, names in
              os.walk(os.path.join(checkpoints, str(latest))) for name in names),
             key=os.path.getsize)
  data = bytearray(open(path, "rb").read())
  data[len(data) // 2] ^= 0x01
  open(path, "wb").write(bytes(data))
  restart = run(command(workdir, args.steps, args.every), tmp)
  named = restart.returncode == 2 and f"step {latest}" in restart.stderr and "corrupt" in restart.stderr
  return {"case": f"one flipped bit in the checkpoint of step {latest}", "faults": 1,
          "resumed": 0, "trained_again": 0, "exit": restart.returncode, "status": restart.stderr.strip()[:90] + "...",
          "steps": len(records(workdir)), "silent_differences": 0 if named else 1}


def _listdir(path):
  try:
    return os.listdir(path)
  except OSError:
    return []


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--kills", type=int, default=20)
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--every", type=int, default=10)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=None, help="keep the run directories here")
  args = parser.parse_args()
  print(common.header("faults: kill -9, concurrent starts, corrupted checkpoints"), flush=True)
  tmp = args.out or tempfile.mkdtemp(prefix="jaxbench-faults-")
  os.makedirs(tmp, exist_ok=True)
  t0 = time.time()
  whole = run(command(os.path.join(tmp, "uninterrupted"), args.steps, args.every), tmp)
  assert whole.returncode == 0, whole.stderr[-3000:]
  reference = records(os.path.join(tmp, "uninterrupted"))
  print(f"uninterrupted: {len(reference)} steps, final loss {reference[-1][1]:.6f}", flush=True)
  rows = [kill_at_random(tmp, reference, args), concurrent_starts(tmp, reference, args),
          corrupted_checkpoint(tmp, reference, args)]
  print("\n| case | faults | runs resumed | steps trained again | exit | result | steps in "
        "metrics | silent differences |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- |")
  for r in rows:
    print(f"| {r['case']} | {r['faults']} | {r['resumed']} | {r['trained_again']} | {r['exit']} | "
          f"{r['status']} | {r['steps']} | {r['silent_differences']} |")
  total = sum(r["silent_differences"] for r in rows)
  print(f"\nsilent differences in all: {total} (goal 0); {time.time() - t0:.0f} s; "
        f"run directories in {tmp}")
  if not args.out:
    shutil.rmtree(tmp, ignore_errors=True)
  print(json.dumps({"rows": rows, "silent_differences": total}))
  sys.exit(1 if total else 0)


if __name__ == "__main__":
  main()
