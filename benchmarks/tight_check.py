"""Does a TIGHT step train? The step that fits the GPU's pool once but not beside a second
step's temporaries, run for a few steps.

  python benchmarks/tight_check.py --suite=SUITE_OUT [--steps=6] [--timeout_s=150]

On an H200 such steps (mpt-1b batch 8, mpt-350m batch 16) ran their first step and ran out of
memory in the second while the loop queued the next step ahead; `jaxbench train` now runs them one
at a time (program.queue_ahead, named in run.json). This reads a finished GPU suite's compiled batch
search (benchmarks/gpu_suite.py --batch_search=compile: suite.json), takes the first size with a
batch that XLA says fits once but not twice, trains it for --steps steps, and writes
SUITE_OUT/tight/tight.md and tight.json: the figures, the loop's queue_ahead decision, the status.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
GIB = 2**30


def tight_candidate(suite: dict) -> dict | None:
  """The first (size, batch) whose step fits the pool once but not with a second step's
  temporaries, with the flags of that size's JAX run; None when the search found none."""
  pool = suite.get("pool_bytes")
  if not pool:
    return None
  for r in suite.get("results", []):
    run = next((x for x in r.get("runs", []) if x.get("framework") == "jax" and x.get("flags")),
               None)
    for t in r.get("batch_search", []):
      once, twice = t.get("compiled_bytes"), t.get("with_next_step_bytes")
      if once and twice and once <= pool < twice and run:
        return {"size": r["size"], "batch_size": t["batch_size"], "compiled_bytes": once,
                "with_next_step_bytes": twice, "pool_bytes": pool, "flags": run["flags"]}
  return None


def train_flags(flags: list[str], batch: int, steps: int) -> list[str]:
  """The suite run's flags at another batch, for `steps` steps, nothing traced."""
  keep = [f for f in flags if not f.startswith(("--config.batch_size=", "--config.steps=",
                                                "--config.profile_steps=",
                                                "--config.dump_hlo=",
                                                "--config.warmup_steps_excluded="))]
  return keep + [f"--config.batch_size={batch}", f"--config.steps={steps}",
                 f"--config.warmup_steps_excluded={min(2, steps - 1)}"]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--suite", required=True)
  p.add_argument("--steps", type=int, default=6)
  p.add_argument("--timeout_s", type=float, default=150)
  args = p.parse_args(argv)
  with open(os.path.join(args.suite, "suite.json")) as f:
    suite = json.load(f)
  out = os.path.join(args.suite, "tight")
  os.makedirs(out, exist_ok=True)
  cand = tight_candidate(suite)
  if cand is None:
    text = "no TIGHT batch in the suite's compiled batch search (run it with --batch_search=compile)"
    print(f"tight_check: {text}")
    with open(os.path.join(out, "tight.md"), "w") as f:
      f.write(f"# TIGHT step check\n\n{text}\n")
    return 0
  from gpu_suite import train_process
  workdir = os.path.join(out, f"{cand['size']}-b{cand['batch_size']}")
  run = train_process(train_flags(cand["flags"], cand["batch_size"], args.steps), workdir,
                      args.timeout_s)
  summary, run_info = run["summary"] or {}, {}
  if os.path.exists(os.path.join(workdir, "run.json")):
    with open(os.path.join(workdir, "run.json")) as f:
      run_info = json.load(f)
  status, reason = run["status"], run["reason"]
  result = {**cand, "status": status, "reason": reason, "wall_s": run["wall_s"],
            "queue_ahead": run_info.get("queue_ahead"), "steps": summary.get("steps"),
            "peak_memory_bytes": summary.get("peak_memory_bytes_per_device"),
            "step_time_s_median": summary.get("step_time_s_median")}
  result.pop("flags")
  peak = result["peak_memory_bytes"]
  text = (f"| size | batch | compiled once GiB | with the next step's temporaries GiB | pool GiB | "
          f"queue_ahead | status | measured peak GiB |\n| --- | --- | --- | --- | --- | --- | --- | --- |\n"
          f"| {cand['size']} | {cand['batch_size']} | {cand['compiled_bytes'] / GIB:.2f} | "
          f"{cand['with_next_step_bytes'] / GIB:.2f} | {cand['pool_bytes'] / GIB:.2f} | "
          f"{result['queue_ahead']} | {status} ({reason}) | "
          f"{'-' if peak is None else f'{peak / GIB:.2f}'} |")
  with open(os.path.join(out, "tight.md"), "w") as f:
    f.write("# TIGHT step check\n\n" + text + "\n")
  with open(os.path.join(out, "tight.json"), "w") as f:
    json.dump(result, f, indent=2)
  print(text)
  return 0 if status == "ok" else 1


if __name__ == "__main__":
  sys.exit(main())
