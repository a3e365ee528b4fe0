"""The GPU suite: JAX against the PyTorch twin on one GPU, for MPT 125m, 350m and 1b.

  benchmarks/gpu_suite.sh OUT_DIR                       # on one H100 / H200: the whole suite
  python benchmarks/gpu_suite.py --out=DIR [--sizes=125m,350m,1b] [--steps=20] [--budget_s=450]
                                 [--config.KEY=VALUE ...]     (passed to every run)

For each size, at seq_len 2048 in bfloat16: the largest global batch (a power of two) that the
analytic memory model (jaxbench/memory.py) says fits JAX's allocator pool with a margin, then
`jaxbench train` in JAX (attention auto) and in the twin (torch.compile, SDPA) at that same batch,
`--steps` measured steps after `--warmup` excluded ones, each run its own process with a timeout.
A run that runs out of memory is retried at half the batch (both frameworks then use the smaller
one, so every comparison is at equal tokens per step). Then `jaxbench compare` per size, and
OUT/suite.md + OUT/suite.json: tokens/s per device, MFU, the JAX/torch ratio, predicted against
measured memory. A size whose runs would start after --budget_s is skipped and says so.

The same logic runs on a CPU with tiny sizes (CI does: tests/test_gpu_suite.py); nothing here is
specific to a vendor except `nvidia-smi` for the device memory, which --memory_gib replaces.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# The driver process only predicts memory (shapes, no arrays): it must not take a GPU's memory.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from jaxbench import sweep as sweep_lib  # noqa: E402

GIB = 2**30
# JAX's allocator takes this share of the device by default; the prediction must fit in it.
JAX_POOL_FRACTION = 0.75
# The memory model is checked against XLA's own figures by benchmarks/memory.py; keep a margin
# for what it does not model (workspace, fragmentation).
MARGIN = 0.85
# XLA's buffer assignment for the target matched the device's measured peak within 1.5% on an
# H200 (benchmarks/RESULTS.md); keep a little room for the input pipeline and the allocator, on
# top of the room for the next step's temporaries.
COMPILED_MARGIN = 0.92
# Statuses that say the software is broken rather than the batch too big: --fail_fast stops there.
FAILURES = ("crash", "compile_error", "bad_config")


def device_memory_bytes(override_gib: float | None) -> int:
  if override_gib:
    return int(override_gib * GIB)
  try:
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return int(out.split()[0]) * 2**20  # MiB
  except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
    raise SystemExit(f"gpu_suite: cannot read the device memory ({e}); pass --memory_gib") from None


def base_framework(label: str) -> str:
  """`jax` or `torch` for a run label: a framework, or a variant of one (--variant)."""
  return label.split("-", 1)[0]


def profile_spec(args, label: str) -> str:
  """START:END of the steps traced in the run `label`, or "": only the plain JAX run
  (--profile_jax) and the plain twin (--profile_torch) are traced, not their variants."""
  return {"jax": args.profile_jax, "torch": args.profile_torch}.get(label, "")


def profiled_steps(args, label: str) -> int:
  """How many steps are traced in the run `label`."""
  spec = profile_spec(args, label)
  if not spec:
    return 0
  first, _, last = spec.partition(":")
  return int(last) - int(first) + 1


def config_for(args, size: str, batch: int, framework: str) -> list[str]:
  """`jaxbench train` flags of one run (framework: a --frameworks label)."""
  traced = profiled_steps(args, framework)
  spec = profile_spec(args, framework)
  # Traced steps are kept out of the summary, so the traced runs get more steps; every run of a
  # size gets as many, as the learning-rate schedule follows `steps` (compare warns otherwise).
  labels = [label for label in args.frameworks.split(",") if label]
  steps = args.steps + args.warmup + max([traced, *(profiled_steps(args, l) for l in labels)])
  variant_flags = args.variant_flags.get(framework, [])
  framework = base_framework(framework)
  flags = [f"--config=configs/{args.family}.py:{size}", f"--config.framework={framework}",
           f"--config.batch_size={batch}", f"--config.steps={steps}",
           f"--config.warmup_steps_excluded={args.warmup}", "--config.log_every=5"]
  if traced:
    first, _, last = spec.partition(":")
    flags.append(f"--config.profile_steps={int(first) + args.warmup}:{int(last) + args.warmup}")
    if framework == "jax":  # profiling's table then names each kernel's model code
      flags.append("--config.dump_hlo=True")
  if args.seq_len:
    flags.append(f"--config.seq_len={args.seq_len}")
  if args.dtype:
    flags.append(f"--config.dtype={args.dtype}")
  if framework == "torch":
    flags.append(f"--config.torch.compile={args.torch_compile}")
    flags.append(f"--config.torch.init={args.torch_init}")
  return flags + list(args.extra) + variant_flags


@functools.lru_cache(maxsize=None)
def _predicted(flags: tuple[str, ...], nvidia: bool) -> tuple[int, int]:
  """(predicted bytes per device, n_params) of the JAX run these flags describe, on one device
  (an NVIDIA GPU: the fused attention that `auto` picks there when the config allows it)."""
  from jaxbench import config as config_lib
  from jaxbench import memory, program
  c, _ = config_lib.parse_flags(["gpu_suite", *flags])
  mesh = config_lib.validate(c, 1)
  attention = c.model.attention
  if attention == "auto" and nvidia and program.cudnn_problem(c, True) is None:
    attention = "cudnn"
  p = memory.predict(c, mesh, attention=attention)
  from jaxbench import model as model_lib
  n_params = model_lib.param_count(model_lib.ModelConfig.from_config(c, "xla"))["total"]
  return int(p["total"]), n_params


def predicted_bytes(args, flags: list[str]) -> tuple[int, int]:
  """_predicted, once per distinct run: the batch search, the run and the table ask for the same.
  The runs go to an NVIDIA GPU unless told the CPU or given --memory_gib (no nvidia-smi)."""
  return _predicted(tuple(flags), args.platforms != "cpu" and not args.memory_gib)


def compiled_bytes(args, size: str, batches: list[int]) -> dict[int, dict]:
  """XLA's own per-device memory for the JAX step at each batch: `jaxbench compile` for
  --target (deviceless, all batches at once). {batch: {"bytes", "with_next_step_bytes", "error"}}."""
  from aot_vs_device import compile_reports
  search_dir = os.path.join(args.out, "batch_search")
  os.makedirs(search_dir, exist_ok=True)
  stems = {b: os.path.join(search_dir, f"{size}-b{b}") for b in batches}
  results = compile_reports({stems[b]: [*config_for(args, size, b, "jax"), f"--target={args.target}",
                                        "--topology=1x1x1"] for b in batches},
                            args.search_timeout_s)
  out = {}
  for b in batches:
    report, error = results[stems[b]]["report"], results[stems[b]]["error"]
    if report and report.get("compiled"):
      out[b] = {"bytes": report["memory"]["total_bytes"], "error": None,
                "with_next_step_bytes": report["memory"]["with_next_step_bytes"]}
    else:
      out[b] = {"bytes": None, "with_next_step_bytes": None,
                "error": ((report or {}).get("error") or error or "")[:300]}
  return out


def choose_batch(args, size: str, pool_bytes: int) -> tuple[int, list[dict]]:
  """The largest power-of-two batch that fits, and the figures looked at: XLA's compiled memory
  for --target (--batch_search=compile) or the analytic model's prediction (model). The sweep's
  --max_batch search (sweep.search_batch) doubles the batch from --min_batch until one does not
  fit (powers of two only: no bisection)."""
  batches = [args.min_batch * 2**k for k in range(64) if args.min_batch * 2**k <= args.max_batch]
  if args.batch_search == "compile":  # every batch at once: the compiles run side by side
    compiled = compiled_bytes(args, size, batches)
  trail = []

  def probe(n: int) -> str:  # n: a multiple of --min_batch
    batch = n * args.min_batch
    predicted = predicted_bytes(args, config_for(args, size, batch, "jax"))[0]
    if args.batch_search == "compile":
      # Room for the next step's temporaries too (jaxbench/compile.py memory_report).
      need = compiled[batch]["with_next_step_bytes"]
      trail.append({"batch_size": batch, "compiled_bytes": compiled[batch]["bytes"],
                    "with_next_step_bytes": need, "error": compiled[batch]["error"],
                    "predicted_bytes": predicted,
                    "fits": need is not None and need <= pool_bytes * COMPILED_MARGIN})
    else:
      trail.append({"batch_size": batch, "predicted_bytes": predicted,
                    "fits": predicted <= pool_bytes * MARGIN})
    return "ok" if trail[-1]["fits"] else "does not fit"

  found, _ = (sweep_lib.search_batch(probe, 1, batches[-1] // args.min_batch, bisect=False)
              if batches else (None, []))
  return (found * args.min_batch if found else args.min_batch), trail


class _Quiet:
  """The sweep's runner shows progress through a display; the suite prints its own lines."""

  def tick(self, label: str, running_s: float) -> None:
    pass


def train_process(flags: list[str], workdir: str, timeout_s: float, platforms: str | None = None,
                  env_settings: list[str] = ()) -> dict:
  """One `jaxbench train FLAGS --workdir=WORKDIR` process on the device, run by the sweep's
  runner (a clean stop at the timeout, then a kill) and classified by the sweep's rules (the
  driver's own JAX_PLATFORMS is not passed on; `platforms` sets the run's), with extra
  environment settings NAME=VALUE (XLA_FLAGS appended), its log in WORKDIR.log.
  {"status", "reason", "log", "wall_s", "error_tail", "summary"}."""
  from jaxbench import outcome
  os.makedirs(os.path.dirname(workdir), exist_ok=True)
  log_path = workdir + ".log"
  env = {"JAX_PLATFORMS": platforms or None}
  for assignment in env_settings:
    name, _, value = assignment.partition("=")
    env[name] = ((os.environ.get(name, "") + " " + value).strip() if name == "XLA_FLAGS"
                 else value)
  cmd = [sys.executable, "-m", "jaxbench", "train", *flags, f"--workdir={workdir}"]
  run = sweep_lib.Runner(_Quiet()).run(cmd, sweep_lib.child_env(env), log_path, timeout_s,
                                       os.path.basename(workdir), cwd=REPO)
  summary = None
  if os.path.exists(os.path.join(workdir, "summary.json")):
    with open(os.path.join(workdir, "summary.json")) as f:
      summary = json.load(f)
  status, reason = outcome.classify(run["returncode"], run["log"], run["timed_out"], summary)
  return {"status": status, "reason": reason, "log": log_path, "wall_s": run["duration_s"],
          "error_tail": None if status == "ok" else outcome.error_tail(run["log"]),
          "summary": summary}


def run_train(args, size: str, batch: int, framework: str, timeout_s: float) -> dict:
  """One run of the suite: `framework` (a --frameworks label) at `batch`."""
  flags = config_for(args, size, batch, framework)
  settings = args.variant_env.get(framework, [])
  workdir = os.path.join(args.out, "runs", f"{size}-{framework}-b{batch}")
  run = train_process(flags, workdir, timeout_s, args.platforms, settings)
  print(f"  {size} {framework} batch {batch}: {run['status']} ({run['reason']}) in "
        f"{run['wall_s']:.0f}s", flush=True)
  return {"framework": framework, "batch_size": batch, "flags": flags, "env": " ".join(settings),
          "workdir": workdir, **run}


def run_size(args, size: str, pool_bytes: int, deadline: float) -> dict:
  batch, trail = choose_batch(args, size, pool_bytes)
  need, n_params = predicted_bytes(args, config_for(args, size, batch, "jax"))
  compiled = next((t.get("compiled_bytes") for t in trail if t["batch_size"] == batch), None)
  how = (f"compiled for {args.target} to need {compiled / 2**20:,.0f} MiB (the model predicted "
         f"{need / 2**20:,.0f})" if compiled else f"predicted to need {need / 2**20:,.0f} MiB")
  print(f"{size}: {n_params / 1e6:,.1f}M params, batch {batch} {how} of a "
        f"{pool_bytes / 2**20:,.0f} MiB pool", flush=True)
  result = {"size": size, "n_params": n_params, "batch_search": trail, "runs": []}
  frameworks = [f for f in args.frameworks.split(",") if f]
  done: dict[str, dict] = {}
  while frameworks:
    framework = frameworks[0]
    left = deadline - time.time()
    if left < 30:
      result["runs"].append({"framework": framework, "batch_size": batch, "status": "skipped",
                             "reason": "the suite's time budget ran out"})
      frameworks.pop(0)
      continue
    run = run_train(args, size, batch, framework, min(args.timeout_s, left))
    result["runs"].append(run)
    if run["status"] == "oom" and batch > args.min_batch:
      batch //= 2  # both frameworks at the smaller batch: equal tokens per step
      frameworks = [f for f in args.frameworks.split(",") if f]
      done.clear()
      continue
    done[framework] = run
    frameworks.pop(0)
    if args.fail_fast and run["status"] in FAILURES and framework in ("jax", "torch"):
      result["failed"] = f"{size} {framework}: {run['status']} ({run['reason']}); see {run['log']}"
      break
  result["batch_size"] = batch
  result["predicted_bytes"] = predicted_bytes(args, config_for(args, size, batch, "jax"))[0]
  result["compiled_bytes"] = next((t.get("compiled_bytes") for t in trail
                                   if t["batch_size"] == batch), None)
  ok = [done[f] for f in done if done[f]["status"] == "ok"]
  if len(ok) >= 2:
    out = os.path.join(args.out, "compare", size)
    proc = subprocess.run([sys.executable, "-m", "jaxbench", "compare",
                           *[r["workdir"] for r in ok], f"--out={out}"], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True,
                          timeout=300)
    result["compare"] = {"returncode": proc.returncode, "out": out,
                         "stdout_tail": proc.stdout[-3000:], "stderr_tail": proc.stderr[-2000:]}
  return result


def _fmt(x, spec):
  return "-" if x is None else format(x, spec)


def table(results: list[dict], twin: str = "torch.compile") -> str:
  lines = ["| size | params | batch | framework | status | tokens/s/device | MFU | step ms | "
           "compile s | peak memory GiB | predicted GiB | XLA compiled GiB |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in results:
    for run in r["runs"]:
      s = run.get("summary") or {}
      mem = s.get("peak_memory_bytes_per_device")
      step = s.get("step_time_s_median")
      lines.append(
          f"| {r['size']} | {r['n_params'] / 1e6:,.1f}M | {run['batch_size']} | {run['framework']} | "
          f"{run['status']} | {_fmt(s.get('tokens_per_s_per_device_median'), ',.0f')} | "
          f"{_fmt(s.get('mfu_median'), '.1%')} | {_fmt(step and step * 1e3, '.1f')} | "
          f"{_fmt(s.get('compile_s'), '.1f')} | {_fmt(mem and mem / GIB, '.2f')} | "
          f"{_fmt(r.get('predicted_bytes', 0) / GIB, '.2f')} | "
          f"{_fmt(r.get('compiled_bytes') and r['compiled_bytes'] / GIB, '.2f')} |")
  ratios = []
  for r in results:
    by = {run["framework"]: (run.get("summary") or {}).get("tokens_per_s_per_device_median")
          for run in r["runs"] if run["status"] == "ok" and run["batch_size"] == r.get("batch_size")}
    by = {label: v for label, v in by.items() if v}
    at = f"- {r['size']} at batch {r['batch_size']}:"
    if "torch" in by:
      for label in [f for f in by if base_framework(f) == "jax"]:
        name = "JAX" if label == "jax" else f"JAX ({label})"
        ratios.append(f"{at} {name} delivers {by[label] / by['torch']:.0%} of the twin's ({twin}) "
                      "tokens/s per device")
    # A variant against its own framework's plain run, measured side by side in this suite.
    for label in [f for f in by if f not in ("jax", "torch") and base_framework(f) in by]:
      plain = base_framework(label)
      ratios.append(f"{at} {label} runs at {by[label] / by[plain]:.0%} of plain {plain}'s "
                    "tokens/s per device")
  return "\n".join(lines + [""] + (ratios or ["- no size has two runs ok"]))


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True)
  p.add_argument("--family", default="mpt")
  p.add_argument("--sizes", default="125m,350m,1b")
  p.add_argument("--frameworks", default="jax,torch")
  p.add_argument("--seq_len", type=int, default=2048)
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--steps", type=int, default=20, help="measured steps per run")
  p.add_argument("--warmup", type=int, default=3, help="steps excluded after compile")
  p.add_argument("--min_batch", type=int, default=1)
  p.add_argument("--max_batch", type=int, default=256)
  p.add_argument("--memory_gib", type=float, default=None,
                 help="device memory (default: nvidia-smi)")
  p.add_argument("--timeout_s", type=float, default=240, help="per run")
  p.add_argument("--budget_s", type=float, default=450, help="no run starts after this")
  p.add_argument("--torch_compile", default="True")
  p.add_argument("--torch_init", default="torch",
                 help="torch: the twin draws its own init (fast for big models); jax: converted")
  p.add_argument("--batch_search", choices=("model", "compile"), default="model",
                 help="fit the batch by the analytic memory model, or by XLA's memory analysis of "
                      "the step compiled deviceless for --target (needs the CUDA plugin and ptxas)")
  p.add_argument("--target", default="h100",
                 help="--batch_search=compile: a `jaxbench compile` target (e.g. the file "
                      "`jaxbench compile --describe_local` wrote)")
  p.add_argument("--search_timeout_s", type=float, default=120)
  p.add_argument("--variant", action="append", default=[],
                 help="LABEL:SETTING[,SETTING]: another run per size, as jax or torch (the part "
                      "of LABEL before '-'), each SETTING an environment variable NAME=VALUE "
                      "(XLA_FLAGS are appended) or a --config.KEY=VALUE flag; LABEL joins "
                      "--frameworks, e.g. jax-cublas:XLA_FLAGS=--xla_gpu_enable_triton_gemm=false "
                      "or jax-unrolled:--config.model.scan_layers=False")
  p.add_argument("--profile_jax", default="",
                 help="START:END: trace these measured steps of each JAX run (jax.profiler; the "
                      "traced steps are added to --steps, not taken from it)")
  p.add_argument("--profile_torch", default="",
                 help="START:END: the same for each twin run (torch.profiler; its table of "
                      "kernels is the run's top_ops.txt)")
  p.add_argument("--fail_fast", action="store_true",
                 help="stop at the first run that crashes or does not compile (saves device time)")
  p.add_argument("--platforms", default=None, help="JAX_PLATFORMS for the runs (default: as found)")
  args, rest = p.parse_known_args(argv)
  bad = [a for a in rest if not a.startswith("--config.")]
  if bad:
    p.error(f"unrecognized arguments: {' '.join(bad)} (more --config.KEY=VALUE flags go to every run)")
  args.extra = rest
  args.variant_env, args.variant_flags = {}, {}
  for spec in args.variant:
    label, _, assignments = spec.partition(":")
    settings = [a for a in assignments.split(",") if a]
    if (base_framework(label) not in ("jax", "torch") or "-" not in label or not settings
        or not all("=" in a and (a.startswith("--config.") or not a.startswith("-"))
                   for a in settings)):
      p.error(f"--variant {spec!r}: expected jax-NAME:SETTING[,SETTING] (or torch-NAME:...), "
              "each SETTING VAR=VALUE or --config.KEY=VALUE")
    args.variant_flags[label] = [a for a in settings if a.startswith("--config.")]
    args.variant_env[label] = [a for a in settings if not a.startswith("--")]
    if label not in args.frameworks.split(","):
      args.frameworks += "," + label
  for name in ("profile_jax", "profile_torch"):
    value = getattr(args, name)
    if value and not re.fullmatch(r"\d+:\d+", value):
      p.error(f"--{name} {value!r}: expected START:END, e.g. 10:11")
  args.out = os.path.abspath(args.out)  # the runs start in the repository root
  return args


def main(argv=None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  os.makedirs(args.out, exist_ok=True)
  start = time.time()
  deadline = start + args.budget_s
  pool = int(device_memory_bytes(args.memory_gib) * JAX_POOL_FRACTION)
  results = []
  failed = None
  for size in [s for s in args.sizes.split(",") if s]:
    results.append(run_size(args, size, pool, deadline))
    failed = results[-1].get("failed")
    if failed:
      print(f"gpu_suite: stopping (--fail_fast): {failed}", flush=True)
    with open(os.path.join(args.out, "suite.json"), "w") as f:  # after each size: nothing lost
      json.dump({"args": vars(args), "elapsed_s": time.time() - start, "pool_bytes": pool,
                 "results": results, "failed": failed}, f, indent=2, default=str)
    if failed:
      return 1
  text = table(results, "torch.compile" if args.torch_compile == "True" else "eager")
  with open(os.path.join(args.out, "suite.md"), "w") as f:
    f.write(f"# GPU suite\n\n{text}\n")
  print(text)
  print(f"gpu_suite: {time.time() - start:.0f}s; {os.path.join(args.out, 'suite.md')}")
  all_ok = all(run["status"] == "ok" for r in results for run in r["runs"]
               if run["batch_size"] == r["batch_size"])
  return 0 if all_ok else 1


if __name__ == "__main__":
  sys.exit(main())
