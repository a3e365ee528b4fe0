"""`jaxbench train`: one training run, timed honestly, written to a run directory.

The path of a run, in order: config -> checks -> mesh -> sharded init -> compile (timed apart)
-> timed steps -> run directory. Usage:

  jaxbench train [--config=configs/mpt.py:tiny] [--config.KEY=VALUE ...] [--workdir=DIR]
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import sys
import time

import jax
import numpy as np
from absl import flags

from jaxbench import cli
from jaxbench import checkpoint as checkpoint_lib
from jaxbench import config as config_lib
from jaxbench import data as data_lib
from jaxbench import distributed
from jaxbench import errors
from jaxbench import hostalloc
from jaxbench import memory as memory_lib
from jaxbench import model as model_lib
from jaxbench import peak as peak_lib
from jaxbench import profiling
from jaxbench import program
from jaxbench.program import cudnn_problem  # noqa: F401 (benchmarks/gpu_suite.py reads it here)
from jaxbench import rundir as rundir_lib
from jaxbench import runlog
from jaxbench import sharding
from jaxbench import step as step_lib
from jaxbench import sysinfo
from jaxbench.errors import ConfigError, Diverged


def default_workdir(c, platform: str) -> str:
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  return os.path.join("runs", f"{stamp}-{c.family}-{c.preset}-{platform}")




def _default_workdir_all_processes(c, platform: str) -> str:
  """The default run directory, the same on every process (process 0's clock decides)."""
  if jax.process_count() == 1:
    return default_workdir(c, platform)
  from jax.experimental import multihost_utils
  stamp = int(multihost_utils.broadcast_one_to_all(np.int64(time.time())))
  name = datetime.datetime.fromtimestamp(stamp).strftime("%Y%m%d-%H%M%S")
  return os.path.join("runs", f"{name}-{c.family}-{c.preset}-{platform}")


def run(c, workdir: str | None = None, cluster: str = "single process",
        determinism: dict | None = None) -> dict:
  """Trains per config `c`; returns summary.json's contents. Raises ConfigError before compiling
  on bad input (and before allocating the state when the compiled step does not fit), Diverged on
  a non-finite loss."""
  setup = program.build(c)
  train_data = data_lib.make(c, "train")  # bad data fails here, before anything is written
  eval_data = data_lib.make(c, "val") if c.eval.every else None
  workdir = workdir or _default_workdir_all_processes(c, setup.devices[0].platform)
  # The run directory is this run's alone while it runs: checked and locked before it is read.
  lock = errors.agreed(lambda: rundir_lib.claim(workdir, jax.process_index() == 0,
                                                c.checkpoint.every > 0), _any_process)
  try:
    return _run(setup, workdir, train_data, eval_data, cluster, determinism)
  finally:
    if lock is not None:
      lock.release()


def _run(setup: program.Setup, workdir: str, train_data, eval_data, cluster, determinism) -> dict:
  c = setup.config
  devices, mesh_shape, attention = setup.devices, setup.mesh_shape, setup.attention
  platform = devices[0].platform
  n_params, counts, flops = setup.n_params, setup.param_counts, setup.flops
  is_writer = jax.process_index() == 0
  m = c.model
  say = print if is_writer else (lambda *a, **k: None)
  # Read by every process once the lock is held; process 0's reading decides for all.
  resuming, earlier = errors.agreed(lambda: rundir_lib.what_is_there(workdir, c.to_dict()),
                                    _any_process)
  resuming = _from_process_0(resuming)
  if _from_process_0(bool(earlier and "finished" in earlier)):
    say(f"jaxbench: the run in {workdir} already finished its {c.steps} steps (no checkpoints "
        "kept): nothing to do")
    return (earlier or {}).get("finished") or {"status": "finished", "steps": c.steps}
  say(f"jaxbench: {c.family}:{c.preset}  d_model={m.d_model} n_layers={m.n_layers} "
      f"n_heads={m.n_heads} n_kv_heads={m.n_kv_heads} d_ff={m.d_ff} vocab={m.vocab_size} "
      f"seq_len={c.seq_len}")
  say(f"  params {n_params:,} ({n_params / 1e6:.1f}M)  FLOPs/token {flops['flops_per_token']:,} "
      f"({flops['formula']})")
  say(f"  {len(devices)} x {devices[0].device_kind} ({platform}), mesh "
      + " x ".join(f"{a}={s}" for a, s in mesh_shape.items())
      + f", dtype {c.dtype}, attention {attention}, remat {m.remat}, scan {m.scan_layers}")
  attention_info = program.describe_attention(c, attention, setup.attention_reason)
  if blocks := model_lib.attention_blocks_text(attention_info):
    say(f"  attention in {blocks} (the FLOPs count keeps them all)")
  say(f"  batch {c.batch_size} x {c.seq_len} tokens in {c.microbatches} microbatch(es), "
      f"{c.steps} steps, first {c.warmup_steps_excluded} not timed")
  if note := data_lib.vocab_note(c, train_data):
    say(f"  {note}")

  host_processes = distributed.processes_on_this_host() if platform == "cpu" else 1
  if (platform == "cpu" and c.peak_tflops == 0 and host_processes == 1
      and peak_lib.cached_peak(jax.local_devices(), c.dtype) is None):
    say("  measuring this CPU's matmul peak for MFU (cached for later runs) ...", flush=True)
  peak = peak_lib.resolve_peak(jax.local_devices(), c.dtype, c.peak_tflops,
                               host_processes=host_processes)
  peak_text = f"{peak.tflops:.4g} TFLOP/s" if peak.tflops is not None else "unknown"
  say(f"  peak per device: {peak_text} ({peak.source}: {peak.detail})")

  tensor_local = sharding.tensor_groups_within_hosts(setup.mesh)
  if not tensor_local:
    say(f"  warning: mesh.tensor={mesh_shape['tensor']} spans hosts ({jax.local_device_count()} "
        "devices per host): tensor-parallel collectives will cross the slow links")
  say(f"  run directory: {os.path.abspath(workdir)}", flush=True)
  run_info = {
      "config": c.to_dict(), "started_at": sysinfo.now_iso(), "versions": sysinfo.versions(),
      **sysinfo.backend(devices), "distributed": cluster, "mesh": mesh_shape,
      "tensor_groups_within_hosts": tensor_local,
      "logical_axis_rules": [list(r) for r in sharding.LOGICAL_AXIS_RULES],
      "param_partition_specs": sharding.describe_param_specs(setup.state_shardings.params),
      "attention": attention_info,
      "n_params": n_params, "param_counts": counts, **flops,
      "peak": dataclasses.asdict(peak),
      "mfu_note": None if peak.tflops else "no peak known for this device: " + peak.detail,
      "env": sysinfo.relevant_env(), "git": sysinfo.git_commit(), "host": sysinfo.host(),
      "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
      "deterministic": determinism or program.apply_determinism(c),
      "host_allocator": hostalloc.describe(c.host_allocator),
  }
  if earlier:
    run_info["restarted"] = earlier
  run_info["data"] = (train_data.describe() if hasattr(train_data, "describe")
                      else {"synthetic": c.data.synthetic, "seed": c.seed})
  checkpointer = None
  if c.checkpoint.every > 0 or resuming:
    checkpointer = checkpoint_lib.Checkpointer(workdir, c.checkpoint.every, c.checkpoint.keep,
                                               c.checkpoint.async_save)
  start_step = 0
  if resuming:
    start_step = checkpointer.latest_step()
    # Checked and read before anything in the run directory changes.
    done = rundir_lib.check_resume(workdir, start_step,
                                   checkpointer.read_meta(start_step)["config"], c.to_dict())
    if done is not None:  # e.g. a sweep stopped between the run's end and its record of it
      checkpointer.close()
      say(f"  the run in {workdir} already finished its {c.steps} steps: nothing to do")
      return done
    say(f"  resuming from the checkpoint of step {start_step} in {checkpointer.directory}")
  progress = runlog.Progress(steps=start_step)
  out = None

  def begin() -> rundir_lib.RunDir:
    """The run directory becomes this start's: from here on, whatever happens, summary.json says
    how it ended. Nothing in it changes before (a bad input, a step that does not fit or a corrupt
    checkpoint leaves it as it was)."""
    nonlocal out
    out = rundir_lib.RunDir(workdir, writer=is_writer, tensorboard=c.tensorboard)
    if earlier:  # an unfinished start without checkpoints: this one replaces its files
      say(f"  the earlier start of this run got to step {earlier['earlier_steps']} "
          f"({earlier['earlier_status']}) with no checkpoint to resume from: starting again from "
          "step 0")
      out.start_over()
    if resuming:
      runlog.resume(out, run_info, start_step, progress, out.truncate_metrics(start_step))
    out.write("run.json", run_info)
    return out

  with runlog.StopRequest() as stop:
    crash = None
    try:
      step_fn = _compile(setup, progress, run_info, say)
      state = _initial_state(setup, progress, checkpointer if resuming else None, start_step, say)
    except ConfigError:  # the step does not fit, a corrupt checkpoint: the directory is as it was
      if checkpointer is not None:
        checkpointer.close()
      raise
    except BaseException as e:  # a crash while compiling or allocating: the run directory says so
      crash = e
    begin()
    save_error = None
    try:
      if crash is not None:
        raise crash
      if c.dump_hlo and out.writer:
        run_info["hlo"] = profiling.dump_hlo(out.path, step_fn.lowered, step_fn.compiled.as_text())
        out.write("run.json", run_info)
      _train(setup, peak, out, run_info, progress, stop, say, train_data, eval_data, checkpointer,
             start_step, state, step_fn)
    except BaseException as e:
      progress.fail(e)
      raise
    finally:
      if checkpointer is not None:
        try:
          checkpointer.close()  # waits for a save in flight: the last good checkpoint is complete
        except Exception as e:  # that save failed (e.g. a full disk): the summary still says so
          save_error = e
          if progress.error is None:
            progress.fail(e)
        # Only ever a complete checkpoint: a save that failed or was cut short is not one.
        progress.last_checkpoint = (checkpointer.complete_steps() or [None])[-1]
      summary = runlog.summary(
          progress, tokens_per_step=c.batch_size * c.seq_len, n_devices=len(devices),
          flops_per_token=flops["flops_per_token"], peak_tflops=peak.tflops,
          peak_source=peak.source, peak_memory=sysinfo.peak_memory_per_device(devices),
          backend=run_info["backend"], device_kind=devices[0].device_kind, n_params=n_params)
      if resuming:
        summary["resumed_from_step"] = start_step
      rundir_lib.write_summary(out, summary, failing=progress.error is not None)
    if save_error is not None:
      raise save_error
  say(runlog.done_line(summary))
  say(f"run directory: {os.path.abspath(out.path)}")
  return summary


def _from_process_0(flag: bool) -> bool:
  """Process 0's `flag` on every process: what it read in the run directory decides for all."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def _any_process(flag: bool) -> bool:
  """True on every process when it is true on any: all processes must stop at the same step."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))


def _compile(setup: program.Setup, p: runlog.Progress, run_info: dict, say) -> program.CompiledStep:
  """Lowers and compiles the step for the run's abstract state, before anything is allocated, and
  checks that it fits (memory_check): ConfigError naming the figures when it does not."""
  c = setup.config
  say("  compiling the train step ...", flush=True)
  p.status, p.phase = "compiling", "compile"
  step = program.compile_step(setup)
  p.lower_s, p.compile_s = step.lower_s, step.compile_s
  run_info["queue_ahead"] = step.queue_ahead_reason
  run_info["compile"] = step.describe(c, setup.flops)
  say(f"  compiled in {p.lower_s + p.compile_s:.1f}s (lower {p.lower_s:.1f}s + compile "
      f"{p.compile_s:.1f}s)", flush=True)
  if c.memory_check:
    errors.agreed(lambda: _check_fits(setup, step.memory), _any_process)
  if not step.queue_ahead:
    say(f"  queueing the next step {step.queue_ahead_reason}", flush=True)
  return step


def _check_fits(setup: program.Setup, memory_analysis: dict) -> None:
  """ConfigError('memory_check') when the compiled step needs more than the device's allocator
  pool, or, on a CPU, than the host has free for all its devices and the run's processes on it."""
  if setup.devices[0].platform == "cpu":
    copies = jax.local_device_count() * distributed.processes_on_this_host()
    available, where = sysinfo.host_memory_available(), (
        "this host" + (f" ({copies} CPU devices' worth)" if copies > 1 else ""))
  else:
    copies, available, where = 1, sysinfo.memory_limit_per_device(setup.devices), "each device"
  problem = memory_lib.fit_problem(memory_analysis, available, copies, where)
  if problem:
    raise ConfigError("memory_check", problem)


def _initial_state(setup: program.Setup, p: runlog.Progress, checkpointer, start_step: int, say):
  """The train state: restored from the checkpoint of `start_step` (its arrays checked against
  the digest written when it was saved) when `checkpointer` is given, else initialized."""
  p.status, p.phase = "initializing", "init"
  t0 = time.perf_counter()
  if checkpointer is not None:
    state, meta = checkpointer.restore(start_step, program.abstract_state(setup))
    if not meta["verified"]:
      say("  (saved before checkpoints had digests: its arrays could not be verified)")
  else:
    state = program.init_state(setup)
  jax.block_until_ready(state)
  p.init_s = time.perf_counter() - t0
  return state


def _train(setup: program.Setup, peak, out, run_info, p: runlog.Progress, stop: "runlog.StopRequest", say,
           train_data, eval_data, checkpointer, start_step: int, state, step: program.CompiledStep) -> None:
  c = setup.config
  run_info["compile"]["init_s"] = p.init_s
  out.write("run.json", run_info)

  def put(batch: np.ndarray):
    """The global batch onto the mesh; with several processes each transfers only the rows its
    own devices hold (every process computes the same global batch: a cheap pure function)."""
    if jax.process_count() == 1:
      return jax.device_put(batch, setup.batch_sharding)
    return jax.make_array_from_callback(batch.shape, setup.batch_sharding, lambda index: batch[index])

  if _any_process(stop.signal_name is not None):
    p.stopped(stop.signal_name, before_first_step=True)
    return

  batch = put(train_data.batch(start_step))
  p.status, p.phase = "training", "train"
  saving = checkpointer is not None and checkpointer.enabled
  evaluate = _evaluator(setup, eval_data, put) if eval_data is not None else None
  ahead = step.queue_ahead
  # With steps queued ahead the prefetcher also transfers batches, overlapping the device's work.
  # One step at a time, it makes them on the host and the loop transfers each once the step
  # before is done: a batch put on the device while a step runs lands past that step's
  # temporaries and, once they are freed, splits the free memory, so a step that fits alone
  # finds no block for its temporaries (seen on an H200: benchmarks/RESULTS.md).
  make = (lambda s: put(train_data.batch(s))) if ahead else train_data.batch
  prefetch = data_lib.Prefetcher(make, start_step + 1, c.steps)
  trace = profiling.StepTrace(out.path, config_lib.profile_steps(c, start_step))
  try:
    _loop(setup, peak, out, p, stop, say, step.compiled, state, batch, prefetch, evaluate,
          checkpointer if saving else None, start_step, trace, ahead, put, inline=step.runs_inline)
  finally:
    prefetch.close()
    trace.stop()
    if trace.steps is not None:
      run_info["profile"] = trace.describe(out.path)
      out.write("run.json", run_info)


def _evaluator(setup: program.Setup, eval_data, put):
  """A function of params -> mean held-out loss over the same eval.batches batches each time."""
  c = setup.config
  params_shardings = setup.state_shardings.params
  jitted = jax.jit(step_lib.make_eval_step(setup.model, c.loss_chunk_size),
                   in_shardings=(params_shardings, setup.batch_sharding),
                   out_shardings=sharding.replicated(setup.mesh))
  batches = [eval_data.batch(j) for j in range(c.eval.batches)]

  def evaluate(params) -> float:
    with sharding.activation_mesh(setup.mesh):
      losses = [jitted(params, put(b)) for b in batches]
    return float(np.mean(jax.device_get(losses)))

  return evaluate


def _loop(setup: program.Setup, peak, out, p: runlog.Progress, stop, say, compiled, state, batch, prefetch,
          evaluate, checkpointer, start_step: int, trace: profiling.StepTrace,
          queue_next: bool = True, put=None, inline: bool = False) -> None:
  """Runs steps start_step+1 .. c.steps. With `queue_next` the prefetcher hands over batches
  already on the device; without it, host batches that `put` transfers just before their step,
  when nothing of the step before is left on the device but the state. `inline` (one step at a
  time only): a dispatch runs the step to its end (JAX's CPU steps under host_allocator), so the
  loop writes a step down before it dispatches the next, not while it runs, and a step's time is
  its transfer, its run and the read of its outputs only."""
  assert queue_next or put is not None, "one step at a time, the loop transfers the batches"
  assert not (inline and queue_next), "inline, a queued step would run in this step's time"
  c, flops = setup.config, setup.flops
  tokens_per_step = c.batch_size * c.seq_len
  n_devices = len(setup.devices)
  config_dict = c.to_dict()
  transfer = None if queue_next else put  # queued, the prefetcher has transferred the batches
  trace.before_dispatch(start_step + 1)
  start = t_prev = time.perf_counter()
  pending = compiled(state, batch)
  for i in range(start_step, c.steps):
    step = i + 1
    state, metrics = pending
    pending = None  # the device_get below then frees this step's outputs before the next dispatch
    if inline:  # the step is done: it ends before the stop agreement and the next batch's wait
      metrics, step_time, t_prev = _read_step(metrics, t_prev)
    # A stop request is honoured between steps: the step in flight is finished, recorded and
    # (with checkpoints on) saved. Every process must agree on it.
    stopping = _any_process(stop.signal_name is not None)
    last = step == c.steps
    next_batch, data_wait_s = prefetch.get(step) if not last and not stopping else (None, 0.0)
    eval_due = evaluate is not None and (step % c.eval.every == 0 or last)
    save_due = checkpointer is not None and (checkpointer.due(step) or stopping or last)
    # Most steps queue the next one before reading their own outputs, so the device never waits
    # for the host's bookkeeping; a step is then timed from the end of the one before. Steps whose
    # state an evaluation or a save needs (the next step takes it: donated), the first and last
    # traced steps, and every step of a run with no room for two steps' temporaries (queue_ahead)
    # wait instead and the next step is timed from its dispatch.
    ahead = (queue_next and next_batch is not None and not eval_due and not save_due
             and not trace.boundary(step))
    if ahead:
      pending = compiled(state, next_batch)
    if not inline:
      metrics, step_time, t_prev = _read_step(metrics, t_prev)
    trace.after_step(step)
    loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
    finite = math.isfinite(loss) and math.isfinite(grad_norm)
    save_s = eval_loss = eval_s = None
    if eval_due and finite:
      # Its time is recorded apart and is in no step's time.
      t_eval = time.perf_counter()
      eval_loss = evaluate(state.params)
      eval_s = time.perf_counter() - t_eval
    if save_due and finite:
      # The save's own time is recorded apart and left out of both steps' times.
      t_save = time.perf_counter()
      checkpointer.save(step, state, config_dict)
      save_s = time.perf_counter() - t_save
      p.checkpoint_s += save_s
    record = runlog.step_record(step, loss, grad_norm, float(metrics["lr"]), step_time,
                                tokens_per_step, n_devices, flops["flops_per_token"], peak.tflops)
    record["data_wait_s"] = data_wait_s
    if eval_loss is not None:
      record["eval_loss"], record["eval_s"] = eval_loss, eval_s
    if save_s is not None:
      record["checkpoint_save_s"] = save_s
    if trace.traced(step):
      record["profiled"] = True
    # The first steps after each (re)start and the traced ones are left out of the summary.
    record["timed"] = i - start_step >= c.warmup_steps_excluded and not trace.traced(step)
    dispatch_next = not ahead and next_batch is not None and finite
    if dispatch_next and not inline:
      # The device works while we write this step down.
      try:
        pending, t_prev = _dispatch(compiled, state, next_batch, transfer, trace, step + 1)
      except BaseException:
        # This step is done (and may be saved: a resume starts after it): its line is kept.
        out.append_metrics(record)
        p.steps, p.final_loss = step, loss
        raise
      next_batch = None  # the runtime holds the batch until its step is done, then frees it
    out.append_metrics(record)
    if record["timed"]:
      p.step_times.append(step_time)
    p.steps, p.final_loss = step, loss
    if not finite:
      say(runlog.progress_line(record, c.steps, None))
      raise Diverged(step, loss, grad_norm)
    if last or i == start_step or (c.log_every and step % c.log_every == 0) or stopping:
      eta = (time.perf_counter() - start) / (i + 1 - start_step) * (c.steps - step)
      say(runlog.progress_line(record, c.steps, eta), flush=True)
    if dispatch_next and inline:
      pending, t_prev = _dispatch(compiled, state, next_batch, transfer, trace, step + 1)
      next_batch = None
    if stopping and not last:
      p.stopped(stop.signal_name)
      if checkpointer is not None:
        say(f"  saved a checkpoint of step {step}: rerun the same command to resume")
      break
  else:
    p.finished()
  jax.block_until_ready(state)


def _read_step(metrics, t_prev: float):
  """(the step's outputs on the host, its time since t_prev, now): waits for the step."""
  metrics = jax.device_get(metrics)
  t_now = time.perf_counter()
  return metrics, t_now - t_prev, t_now


def _dispatch(compiled, state, batch, put, trace: profiling.StepTrace, step: int):
  """(the step's pending outputs, its start time): the step dispatched, its batch first
  transferred by `put` when given (in the step's time: nothing overlaps the transfer then)."""
  trace.before_dispatch(step)
  t_start = time.perf_counter()
  if put is not None:
    batch = put(batch)
  return compiled(state, batch), t_start


# --- command line -------------------------------------------------------------------------------

def _bad_input(message: str) -> int:
  print(f"jaxbench train: bad input: {message}", file=sys.stderr)
  return 2


FLAGS_HELP = (
    ("--config=FILE[:PRESET]", "config file and preset (default configs/mpt.py:tiny); presets: "
     "configs/mpt.py nano tiny small 125m 350m 760m 1b 3b 7b 13b 30b 70b, configs/llama.py"),
    ("--config.KEY=VALUE", "override a config key (below)"),
    ("--workdir=DIR", "the run directory (default runs/<time>-<family>-<preset>-<platform>); the "
     "same command resumes a run there"),
    ("--coordinator_address=HOST:PORT", "several processes: process 0's address (launch.sh sets "
     "it; SLURM and Open MPI are detected)"),
    ("--num_processes=N, --process_id=I", "several processes: their count and this one's index"),
)


def help_text() -> str:
  """`jaxbench train --help`: usage, the flags, and every config key (config.key_docs)."""
  flags_text = "\n".join(f"  {flag}\n      {text}" for flag, text in FLAGS_HELP)
  return (f"{__doc__.strip()}\n\nflags:\n{flags_text}\n\nconfig keys (default, allowed values; "
          "`jaxbench help keys PATTERN` prints a key's whole text):\n\n"
          + config_lib.format_key_docs(config_lib.key_docs()))


def parse_args(argv: list[str]):
  """argv -> (config, workdir, (coordinator, num_processes, process_id)); ConfigError if bad."""
  def define(fv):
    return {
        "workdir": flags.DEFINE_string("workdir", None, "Run directory (default: "
                                       "runs/<time>-<family>-<preset>-<platform>).", flag_values=fv),
        "coordinator": flags.DEFINE_string(
            "coordinator_address", None, "Multi-process: HOST:PORT of process 0 (launch.sh sets "
            "it; SLURM/Open MPI are detected).", flag_values=fv),
        "num_processes": flags.DEFINE_integer("num_processes", None, "Multi-process: process "
                                              "count.", flag_values=fv),
        "process_id": flags.DEFINE_integer("process_id", None, "Multi-process: this process's "
                                           "index.", flag_values=fv),
    }
  c, extra = config_lib.parse_flags(argv, define)
  return c, extra["workdir"], (extra["coordinator"], extra["num_processes"], extra["process_id"])


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv if argv is None else argv)
  if cli.asks_for_help(argv):
    print(help_text())
    return 0
  try:
    c, workdir, cluster = parse_args(argv)
    program.apply_host_allocator(c)  # before any backend or framework starts its threads
    if c.framework == "torch":  # the PyTorch twin: same config, run directory and exit codes
      from jaxbench.twin import train as twin_train
      return twin_train.main(c, workdir, cluster)
    determinism = program.apply_determinism(c)  # before any backend starts
    run_info_cluster = distributed.initialize(*cluster)
    run(c, workdir, cluster=run_info_cluster, determinism=determinism)
  except ConfigError as e:
    return _bad_input(str(e))
  except Diverged as e:
    print(f"jaxbench train: {e}", file=sys.stderr)
    return 3
  return 0


if __name__ == "__main__":
  sys.exit(main())
