"""XLA against PyTorch: the same config trained by JAX and by the PyTorch twin (eager and
torch.compile), the runs alternated in one invocation, tokens/s per device and the ratios.

  python benchmarks/xla_vs_torch.py [--config=configs/mpt.py:small] [--rounds=2] [--steps=12]
      [--modes=jax,jax-unrolled,torch-eager,torch-compile] [--out=DIR] [--markdown]
      [-- --config.KEY=VALUE ...]

Each run is its own `jaxbench train` process with its own run directory under --out, so every
number is also in a run folder that `jaxbench compare` reads. The modes run in turn, round after
round (A B C A B C ...): on a shared or noisy machine a slow spell then hits every mode rather
than one. Each mode's figure is the median over rounds of its runs' median step throughput
(summary.json: compile / warm-up and the first `warmup_steps_excluded` steps left out). Beside the
ratio of those medians, each mode's ratio to the first mode is taken round by round (runs minutes
apart, so a slow spell of the machine weighs on both sides of each ratio), as is the first mode's
ratio to the faster twin mode of each round, the comparison issue #7 asks for.
The default config is issue #7's CPU comparison (mpt small: 6 layers, d_model 384, 6 heads,
seq 256, batch 8, vocab 8192).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from jaxbench import sysinfo  # noqa: E402

MODES = {
    "jax": [],
    "jax-unrolled": ["--config.model.scan_layers=False"],
    "torch-eager": ["--config.framework=torch"],
    "torch-compile": ["--config.framework=torch", "--config.torch.compile=True"],
}


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/mpt.py:small")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--steps", type=int, default=12)
  parser.add_argument("--warmup_steps_excluded", type=int, default=3)
  parser.add_argument("--modes", default=",".join(MODES))
  parser.add_argument("--out", default=None, help="run folders and results.json "
                      "(default: runs/xla_vs_torch-<time>)")
  parser.add_argument("--markdown", action="store_true", help="also print a RESULTS.md section")
  args, extra = parser.parse_known_args(argv)
  modes = [m.strip() for m in args.modes.split(",") if m.strip()]
  unknown = [m for m in modes if m not in MODES]
  if unknown or args.rounds < 1 or args.steps <= args.warmup_steps_excluded:
    parser.error(f"modes from {', '.join(MODES)}; rounds >= 1; steps > warmup_steps_excluded")
  args.modes = modes
  args.extra = [a for a in extra if a != "--"]
  return args


def run_one(args, mode: str, workdir: str) -> dict:
  cmd = [sys.executable, "-m", "jaxbench", "train", f"--config={args.config}",
         f"--config.steps={args.steps}", f"--config.warmup_steps_excluded={args.warmup_steps_excluded}",
         "--config.log_every=0", f"--workdir={workdir}", *MODES[mode], *args.extra]
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
  t0 = time.perf_counter()
  result = subprocess.run(cmd, env=env, capture_output=True, text=True)
  wall = time.perf_counter() - t0
  if result.returncode != 0:
    raise SystemExit(f"{mode} failed (exit {result.returncode}): {' '.join(cmd)}\n"
                     f"{result.stderr[-3000:]}")
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  with open(os.path.join(workdir, "run.json")) as f:
    info = json.load(f)
  return {"mode": mode, "workdir": workdir, "wall_s": wall,
          "tokens_per_s_per_device": summary["tokens_per_s_per_device_median"],
          "step_time_s_median": summary["step_time_s_median"], "mfu": summary["mfu_median"],
          "compile_s": summary["compile_s"], "final_loss": summary["final_loss"],
          "device_kind": summary["device_kind"], "n_devices": summary["n_devices"],
          "versions": info.get("versions", {}), "torch": info.get("torch")}


def summarize(runs: list[dict], modes: list[str]) -> list[dict]:
  rows = []
  for mode in modes:
    mine = [r for r in runs if r["mode"] == mode]
    rows.append({"mode": mode,
                 "tokens_per_s_per_device": statistics.median(r["tokens_per_s_per_device"] for r in mine),
                 "per_round": [r["tokens_per_s_per_device"] for r in mine],
                 "mfu": statistics.median(r["mfu"] for r in mine) if all(r["mfu"] for r in mine) else None,
                 "compile_s": statistics.median(r["compile_s"] for r in mine),
                 "final_loss": mine[-1]["final_loss"]})
  base = rows[0]["tokens_per_s_per_device"]
  for row in rows:
    row["ratio_to_first"] = row["tokens_per_s_per_device"] / base
    row["paired_ratios"] = [x / b for x, b in zip(row["per_round"], rows[0]["per_round"])]
  return rows


def against_best_twin(rows: list[dict]) -> dict | None:
  """The first mode's tokens/s over the faster twin mode's (eager or torch.compile) of the same
  round, round by round; None without a twin mode or when the first mode is one."""
  twins = [r for r in rows if r["mode"].startswith("torch")]
  if not twins or rows[0] in twins:
    return None
  best = [max(r["per_round"][i] for r in twins) for i in range(len(rows[0]["per_round"]))]
  ratios = [x / b for x, b in zip(rows[0]["per_round"], best)]
  return {"mode": rows[0]["mode"], "ratios": ratios, "median": statistics.median(ratios)}


def paired_text(ratios: list[float]) -> str:
  """'1.03x (0.96-1.05x)': the median of per-round ratios and their range."""
  if len(ratios) == 1 or min(ratios) == max(ratios):
    return f"{ratios[0]:.2f}x"
  return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}x)"


def table(rows: list[dict], first: str) -> list[str]:
  lines = [f"| mode | tokens/s/device (median of rounds) | per round | vs {first} | "
           f"vs {first}, round by round | MFU | compile / warm-up s | final loss |",
           "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
  for r in rows:
    mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
    per_round = ", ".join(f"{x:,.0f}" for x in r["per_round"])
    lines.append(f"| {r['mode']} | {r['tokens_per_s_per_device']:,.0f} | {per_round} | "
                 f"{r['ratio_to_first']:.2f}x | {paired_text(r['paired_ratios'])} | {mfu} | "
                 f"{r['compile_s']:.1f} | {r['final_loss']:.4f} |")
  best = against_best_twin(rows)
  if best:
    per_round = ", ".join(f"{x:.2f}x" for x in best["ratios"])
    lines += ["", f"{best['mode']} against the faster twin mode of each round: "
              f"{paired_text(best['ratios'])} (rounds: {per_round})"]
  return lines


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  out = args.out or os.path.join("runs", f"xla_vs_torch-{stamp}")
  os.makedirs(out, exist_ok=True)
  runs = []
  for r in range(args.rounds):
    for mode in args.modes:
      workdir = os.path.join(out, f"round{r + 1}-{mode}")
      print(f"round {r + 1}/{args.rounds}: {mode} ...", flush=True)
      runs.append(run_one(args, mode, workdir))
      print(f"  {runs[-1]['tokens_per_s_per_device']:,.0f} tokens/s/device, compile/warm-up "
            f"{runs[-1]['compile_s']:.1f}s, wall {runs[-1]['wall_s']:.0f}s", flush=True)
  rows = summarize(runs, args.modes)
  versions = runs[0]["versions"]
  torch_run = next((r for r in runs if r["torch"]), None)
  context = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
             "config": args.config, "extra": args.extra, "steps": args.steps,
             "warmup_steps_excluded": args.warmup_steps_excluded, "rounds": args.rounds,
             "machine": f"{platform.node()}: {sysinfo.cpu_model()} x {os.cpu_count()} cores",
             "device_kind": runs[0]["device_kind"], "n_devices": runs[0]["n_devices"],
             "jax": versions.get("jax"), "jaxlib": versions.get("jaxlib"),
             "torch": torch_run["torch"]["version"] if torch_run else None,
             "torch_threads": torch_run["torch"]["num_threads"] if torch_run else None,
             "python": versions.get("python")}
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"context": context, "rows": rows, "against_best_twin": against_best_twin(rows),
               "runs": runs}, f, indent=2)
  print()
  print(" ".join(f"{k}={v}" for k, v in context.items()))
  print("\n".join(table(rows, args.modes[0])))
  for row in rows[1:]:
    print(f"{row['mode']} delivers {row['ratio_to_first']:.0%} of {rows[0]['mode']}'s tokens/s "
          "per device")
  print(f"run folders and results.json: {os.path.abspath(out)}")
  if args.markdown:
    print("\n" + "\n".join(
        [f"- date: {context['date']}; machine: {context['machine']}; device: "
         f"{context['n_devices']} x {context['device_kind']}",
         f"- jax {context['jax']}, torch {context['torch']} ({context['torch_threads']} threads), "
         f"Python {context['python']}",
         f"- `{args.config}` {' '.join(args.extra)}, {args.steps} steps (first "
         f"{args.warmup_steps_excluded} and compile / warm-up excluded), {args.rounds} rounds "
         "alternated", "", *table(rows, args.modes[0])]))
  return 0


if __name__ == "__main__":
  sys.exit(main())
