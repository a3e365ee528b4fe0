"""What a run reports, whatever framework trains: per-step records, progress lines, the summary,
and the stop request. Framework-neutral (no JAX, no torch): the JAX loop (train.py) and the
PyTorch twin write the same metrics.jsonl and summary.json through these functions."""

from __future__ import annotations

import dataclasses
import os
import signal

from jaxbench import outcome
from jaxbench import rundir
from jaxbench import timing
from jaxbench.errors import Diverged


class StopRequest:
  """SIGTERM / SIGINT ask the loop to stop after the current step; a second SIGINT aborts."""

  def __init__(self):
    self.signal_name = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave the handlers alone
        pass
    return self

  def _handle(self, signum, frame):
    if self.signal_name is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name
    print(f"\n{self.signal_name} received: stopping after the current step", flush=True)

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


@dataclasses.dataclass
class Progress:
  """What the run has done so far: enough for summary.json however the run ends."""
  status: str = "starting"
  phase: str = "setup"  # how far the run got: outcome.PHASES
  failure: str | None = None  # the kind of its failure: outcome.FAILURES
  steps: int = 0
  step_times: list = dataclasses.field(default_factory=list)  # the timed (post-warmup) steps
  # A resumed run: the summary's timing covers the timed steps after this one (0: all of them;
  # step_times then starts with those of the earlier segments), and why not all when it is not.
  timed_since_step: int = 0
  timing_note: str | None = None
  final_loss: float | None = None
  lower_s: float | None = None
  compile_s: float | None = None
  init_s: float | None = None
  error: str | None = None
  last_checkpoint: int | None = None
  checkpoint_s: float = 0.0

  def fail(self, e: BaseException) -> None:
    """How the run ended, for summary.json: diverged (a non-finite loss) or failed (anything else,
    Ctrl-C included), and the kind of failure (outcome.failure_kind)."""
    self.failure = outcome.failure_kind(e, self.phase)
    if isinstance(e, Diverged):
      self.status, self.error = "diverged", str(e)
    else:
      self.status, self.error = "failed", f"{type(e).__name__}: {e}"

  def stopped(self, signal_name: str | None, before_first_step: bool = False) -> None:
    """A clean stop on SIGTERM / SIGINT (here or on another process)."""
    where = " before the first step" if before_first_step else ""
    self.status = f"stopped ({signal_name or 'signal on another process'}){where}"
    self.failure = "stopped"

  def finished(self) -> None:
    self.status, self.phase = "finished", "done"


def mfu(tflops: float | None, peak_tflops: float | None) -> float | None:
  """Model FLOPs utilization, or None where it cannot be told: no peak, or a throughput above the
  peak. No step runs faster than a true peak, so a ratio above 1 says the peak is wrong (a CPU's
  measured while other jobs took its cores, which then left) or the FLOP count is: it is never
  shown as a figure."""
  if not tflops or not peak_tflops or tflops > peak_tflops:
    return None
  return tflops / peak_tflops


def above_peak_note(tflops: float | None, peak_tflops: float | None, peak_source: str) -> str | None:
  """Why MFU is unknown when the throughput exceeds the peak (None otherwise)."""
  if not tflops or not peak_tflops or tflops <= peak_tflops:
    return None
  cause = ("measured under heavier load than the steps ran in: `jaxbench peak --no_cache` on a "
           "quiet machine, or a peak from the datasheet table" if peak_source == "measured"
           else "the FLOP count or the step timing is wrong: please report it")
  return (f"MFU unknown: the median step's {tflops:.3g} TFLOP/s/device is above the "
          f"{peak_source} peak of {peak_tflops:.3g} TFLOP/s; the peak was {cause}")


def fmt(n: float) -> str:
  return f"{n:,.0f}" if n >= 100 else f"{n:.3g}"


def summary(p: Progress, *, tokens_per_step: int, n_devices: int, flops_per_token: int,
            peak_tflops: float | None, peak_source: str, peak_memory: tuple[int | None, str],
            backend: str, device_kind: str, n_params: int) -> dict:
  """summary.json's contents. compile_s is lowering + compiling (for torch.compile: the warm-up)."""
  stats = timing.summarize(p.step_times)
  median = stats["step_time_s_median"]
  per_device = tokens_per_step / median / n_devices if median else None
  tflops = flops_per_token * per_device / 1e12 if median else None
  s = {
      "status": p.status, "phase": p.phase, "failure": p.failure, "steps": p.steps, "timed_steps": len(p.step_times),
      "compile_s": ((p.lower_s or 0.0) + p.compile_s) if p.compile_s is not None else None,
      "lower_s": p.lower_s, "init_s": p.init_s, **stats,
      "tokens_per_s_per_device_median": per_device,
      "tflops_per_s_per_device_median": tflops,
      "mfu_median": mfu(tflops, peak_tflops),
      "peak_tflops_per_device": peak_tflops, "peak_source": peak_source,
      "final_loss": p.final_loss, "peak_memory_bytes_per_device": peak_memory[0],
      "peak_memory_source": peak_memory[1], "last_checkpoint_step": p.last_checkpoint,
      "checkpoint_save_s_total": p.checkpoint_s, "backend": backend,
      "device_kind": device_kind, "n_devices": n_devices, "n_params": n_params,
  }
  if p.timed_since_step or p.timing_note:
    s["timed_since_step"] = p.timed_since_step
    s["timing_note"] = p.timing_note
  note = above_peak_note(tflops, peak_tflops, peak_source)
  if note:
    s["mfu_note"] = note
  if p.error:
    s["error"] = p.error
  return s


# run.json's fields that decide a step's time besides the config, and the environment variables.
TIMING_FIELDS = ("versions", "backend", "platform", "platform_version", "driver", "device_kind",
                 "n_devices", "process_count", "mesh", "jax_default_matmul_precision",
                 "host_allocator")
TIMING_ENV_PREFIXES = ("XLA_", "LIBTPU_", "TPU_", "MALLOC_", "NCCL_", "RCCL_", "OMP_", "MKL_",
                       "OPENBLAS_")


def timing_context(run_info: dict) -> dict:
  """What decides a step's time, from run.json's contents: the software, the devices and their
  mesh, the CPU, the timing-relevant environment and the config but for rundir.UNTIMED_KEYS. A
  resumed run's segments with equal contexts are timed as one run."""
  config = {k: v for k, v in (run_info.get("config") or {}).items()  # `mesh`: resolved, above
            if k not in rundir.UNTIMED_KEYS and k != "mesh"}
  if (config.get("data") or {}).get("path"):  # the same folder, however it was written
    config["data"] = {**config["data"], "path": os.path.realpath(config["data"]["path"])}
  env = {k: v for k, v in (run_info.get("env") or {}).items() if k.startswith(TIMING_ENV_PREFIXES)}
  return {**{k: run_info.get(k) for k in TIMING_FIELDS},
          "cpu": (run_info.get("host") or {}).get("cpu"), "env": env, "config": config}


def timing_change(before: dict, after: dict, most: int = 3) -> str | None:
  """The differences between two timing contexts, in words, devices and software first
  ("n_devices 8 -> 1; mesh.fsdp 8 -> 1"; at most `most`); None when they are equal."""
  def flat(d, prefix=""):
    items = {}
    for k, v in d.items():
      if isinstance(v, dict):  # an empty one adds nothing: {} against a missing field is no change
        items.update(flat(v, f"{prefix}{k}."))
      else:
        items[f"{prefix}{k}"] = v
    return items
  a, b = flat(before), flat(after)
  changed = [f"{key} {str(a.get(key))[:60]} -> {str(b.get(key))[:60]}"
             for key in {**a, **b} if a.get(key) != b.get(key)]
  if not changed:
    return None
  more = f"; and {len(changed) - most} more" if len(changed) > most else ""
  return "; ".join(changed[:most]) + more


def earlier_timed_steps(records: list[dict], after: int, upto: int) -> list[float]:
  """The step times of the records marked timed with after < step <= upto, in step order: the
  earlier segments' share of a resumed run's timing (metrics.jsonl as the restart kept it)."""
  kept = sorted((r["step"], r["step_time_s"]) for r in records
                if r.get("timed") and after < r.get("step", 0) <= upto
                and isinstance(r.get("step_time_s"), (int, float)))
  return [t for _, t in kept]


def timing_since(previous: dict, run_info: dict, start_step: int) -> dict:
  """run.json's `resumed.timed_since_step` and `resumed.timing_note`: the summary of a resumed run
  times every segment since the last restart that changed what decides a step's time
  (timing_context), and says which change cut it. `previous`: the earlier start's run.json."""
  before = previous.get("resumed") or {}
  change = timing_change(timing_context(previous), timing_context(run_info))
  if change is None:
    return {"timed_since_step": before.get("timed_since_step", 0),
            "timing_note": before.get("timing_note")}
  return {"timed_since_step": start_step,
          "timing_note": f"timed over the steps after {start_step} only: at that restart {change}"}


def resume(out, run_info: dict, start_step: int, p: Progress, records: list[dict]) -> None:
  """A run resumed after `start_step` in run directory `out` (rundir.RunDir), before its run.json
  is replaced: run.json's `resumed` entry, and in `p` the earlier segments' timed steps among
  `records` (metrics.jsonl's lines up to start_step, RunDir.truncate_metrics's)."""
  try:
    previous = rundir.read_json(out.file("run.json"))
  except (OSError, ValueError):
    previous = {}
  if "profile" in previous:  # a trace of steps before the restart (a window after it replaces it)
    run_info["profile"] = previous["profile"]
  run_info["resumed"] = {"from_step": start_step,
                         "first_started_at": (previous.get("resumed") or {}).get(
                             "first_started_at", previous.get("started_at")),
                         **timing_since(previous, run_info, start_step)}
  records = [r for r in records
             if run_info["resumed"]["timed_since_step"] < r.get("step", 0) <= start_step]
  if any("timed" not in r for r in records):  # written before metrics lines said so
    run_info["resumed"].update(timed_since_step=start_step, timing_note=(
        f"timed over the steps after {start_step} only: the earlier steps' metrics lines do not "
        "say which steps were timed"))
  p.timed_since_step = run_info["resumed"]["timed_since_step"]
  p.timing_note = run_info["resumed"]["timing_note"]
  p.step_times = earlier_timed_steps(records, p.timed_since_step, start_step)


def done_line(s: dict) -> str:
  if not s["step_time_s_median"]:
    return f"done: {s['status']} after {s['steps']} steps, before any timed step"
  mfu = f"{s['mfu_median']:.1%}" if s["mfu_median"] is not None else "unknown"
  tail = f"\n  {s['mfu_note']}" if s.get("mfu_note") else ""
  return (f"done: {s['status']}. median {s['step_time_s_median'] * 1e3:.1f} ms/step "
          f"(p10 {s['step_time_s_p10'] * 1e3:.1f}, p90 {s['step_time_s_p90'] * 1e3:.1f}), "
          f"{fmt(s['tokens_per_s_per_device_median'])} tokens/s/device, "
          f"{s['tflops_per_s_per_device_median']:.3g} TFLOP/s/device, MFU {mfu}, "
          f"final loss {s['final_loss']:.4f}{tail}")


def step_record(step, loss, grad_norm, lr, step_time, tokens_per_step, n_devices, flops_per_token,
                peak_tflops) -> dict:
  """One metrics.jsonl line's required fields."""
  tokens_per_s = tokens_per_step / step_time
  per_device = tokens_per_s / n_devices
  tflops = flops_per_token * per_device / 1e12
  return {"step": step, "loss": loss, "grad_norm": grad_norm, "lr": lr, "step_time_s": step_time,
          "tokens_per_s": tokens_per_s, "tokens_per_s_per_device": per_device,
          "tflops_per_s_per_device": tflops,
          "mfu": mfu(tflops, peak_tflops), **({"mfu_above_peak": True}
                                               if peak_tflops and tflops > peak_tflops else {})}


def progress_line(r: dict, steps: int, eta: float | None) -> str:
  mfu = (f"{r['mfu']:.1%}" if r["mfu"] is not None
         else "unknown (above the peak)" if r.get("mfu_above_peak") else "n/a")
  width = len(str(steps))
  line = (f"step {r['step']:>{width}}/{steps}  loss {r['loss']:.4f}  grad_norm {r['grad_norm']:.3g}  "
          f"lr {r['lr']:.2e}  {r['step_time_s'] * 1e3:.1f} ms/step  "
          f"{fmt(r['tokens_per_s_per_device'])} tok/s/dev  MFU {mfu}")
  if r.get("eval_loss") is not None:
    line += f"  eval_loss {r['eval_loss']:.4f}"
  if eta is not None and r["step"] < steps:
    line += f"  eta {timing.format_duration(eta)}"
  return line
