"""One training run, whatever framework trains it: the run directory, resume, the timing rules,
the per-step records, the summary, stop and divergence. Written once, so that XLA and PyTorch are
timed by the same rules (compile apart, the first steps of each start excluded, evaluations,
saves and traces in no timed step's time).

A framework brings an Engine (train.JaxEngine, twin/train.TorchEngine): how it agrees across
processes, what run.json says of it, how it compiles and initializes or restores its state, and
how it dispatches a step, reads a step's outputs, evaluates and saves. The train step itself stays
the engine's: for JAX a pure jitted function of (state, batch). Checkpoints, evaluations and
traces keep their own schedules (`due`, `traced`), so the loop below reads in one screen.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import time
from typing import Any, Callable, Protocol

from jaxbench import config as config_lib
from jaxbench import data as data_lib
from jaxbench import errors
from jaxbench import rundir as rundir_lib
from jaxbench import runlog
from jaxbench.errors import ConfigError, Diverged


class Engine(Protocol):
  """What a framework supplies to the harness."""
  config: Any
  banner: str  # the first word of its lines: "jaxbench", "jaxbench (torch twin)"
  framework: str  # summary.json's `framework`: "jax", "torch"
  is_writer: bool  # process 0: it writes the run directory and prints
  n_devices: int
  queue_ahead: bool  # the next step may be dispatched before this one's outputs are read
  runs_inline: bool  # a dispatch runs the step to its end (so no step is queued behind it)
  transfer_ahead: bool  # the prefetcher transfers batches (else each just before its step)

  def any_process(self, flag: bool) -> bool: ...
  def from_process_0(self, value: int) -> int: ...
  def workdir_label(self) -> str: ...
  def describe(self, workdir: str, train_data, say) -> tuple[dict, Any]: ...  # (run.json, peak)
  def checkpointer(self, workdir: str): ...
  def prepare(self, p: runlog.Progress, run_info: dict, say, restore, start_step: int,
              train_data): ...  # -> state: compiled, then initialized or restored
  def begun(self, out: rundir_lib.RunDir, run_info: dict) -> None: ...
  def put(self, batch): ...
  def dispatch(self, state, batch, step: int): ...  # -> (state, outputs), without waiting
  def read(self, outputs) -> dict: ...  # waits: loss, grad_norm, lr (and notes that untime it)
  def evaluator(self, eval_data) -> Callable[[Any], float]: ...
  def save(self, checkpointer, step: int, state, config_dict: dict) -> None: ...
  def trace(self, workdir: str, steps): ...
  def finish(self, state) -> None: ...
  def summary_facts(self) -> dict: ...  # runlog.summary's device facts


def default_workdir(c, label: str, stamp: int) -> str:
  """runs/<time>-<family>-<preset>-<label>; `stamp` (seconds) is process 0's clock on every
  process, so that all name the same directory."""
  name = datetime.datetime.fromtimestamp(stamp).strftime("%Y%m%d-%H%M%S")
  return os.path.join("runs", f"{name}-{c.family}-{c.preset}-{label}")


def run(engine: Engine, workdir: str | None, train_data, eval_data) -> dict:
  """Trains with `engine`; returns summary.json's contents. ConfigError before anything in the run
  directory changes on bad input, Diverged on a non-finite loss."""
  c = engine.config
  workdir = workdir or default_workdir(c, engine.workdir_label(),
                                       engine.from_process_0(int(time.time())))
  # The run directory is this run's alone while it runs: checked and locked before it is read.
  lock = errors.agreed(lambda: rundir_lib.claim(workdir, engine.is_writer,
                                                c.checkpoint.every > 0), engine.any_process)
  try:
    return _run(engine, workdir, train_data, eval_data)
  finally:
    if lock is not None:
      lock.release()


@dataclasses.dataclass
class _Start:
  """One start of a run: where it resumes from and what it writes."""
  engine: Engine
  workdir: str
  say: Callable
  run_info: dict
  peak: Any
  progress: runlog.Progress
  resuming: bool
  earlier: dict | None
  start_step: int
  checkpointer: Any
  out: rundir_lib.RunDir | None = None

  def begin(self) -> rundir_lib.RunDir:
    """The run directory becomes this start's: from here on, whatever happens, summary.json says
    how it ended. Nothing in it changes before (a bad input, a step that does not fit or a corrupt
    checkpoint leaves it as it was)."""
    c = self.engine.config
    self.out = rundir_lib.RunDir(self.workdir, writer=self.engine.is_writer,
                                 tensorboard=c.tensorboard)
    if self.earlier:  # an unfinished start without checkpoints: this one replaces its files
      self.say(f"  the earlier start of this run got to step {self.earlier['earlier_steps']} "
               f"({self.earlier['earlier_status']}) with no checkpoint to resume from: starting "
               "again from step 0")
      self.out.start_over()
    if self.resuming:
      runlog.resume(self.out, self.run_info, self.start_step, self.progress,
                    self.out.truncate_metrics(self.start_step))
    self.out.write("run.json", self.run_info)
    return self.out

  def summary(self) -> dict:
    """summary.json's contents, however the start ended."""
    c, p = self.engine.config, self.progress
    if self.checkpointer is not None:
      # Only ever a complete checkpoint: a save that failed or was cut short is not one.
      p.last_checkpoint = (self.checkpointer.complete_steps() or [None])[-1]
    summary = runlog.summary(p, tokens_per_step=c.batch_size * c.seq_len,
                             n_devices=self.engine.n_devices,
                             flops_per_token=self.run_info["flops_per_token"],
                             peak_tflops=self.peak.tflops, peak_source=self.peak.source,
                             n_params=self.run_info["n_params"], **self.engine.summary_facts())
    summary["framework"] = self.engine.framework
    if self.resuming:
      summary["resumed_from_step"] = self.start_step
    return summary


def _run(engine: Engine, workdir: str, train_data, eval_data) -> dict:
  c = engine.config
  say = print if engine.is_writer else (lambda *a, **k: None)
  # Read by every process once the lock is held; process 0's reading decides for all.
  resuming, earlier = errors.agreed(lambda: rundir_lib.what_is_there(workdir, c.to_dict()),
                                    engine.any_process)
  resuming = bool(engine.from_process_0(resuming))
  if engine.from_process_0(bool(earlier and "finished" in earlier)):
    say(f"{engine.banner}: the run in {workdir} already finished its {c.steps} steps (no "
        "checkpoints kept): nothing to do")
    return (earlier or {}).get("finished") or {"status": "finished", "steps": c.steps}
  run_info, peak = engine.describe(workdir, train_data, say)
  if earlier:
    run_info["restarted"] = earlier
  run_info["data"] = (train_data.describe() if hasattr(train_data, "describe")
                      else {"synthetic": c.data.synthetic, "seed": c.seed})
  checkpointer = engine.checkpointer(workdir) if c.checkpoint.every > 0 or resuming else None
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
  start = _Start(engine, workdir, say, run_info, peak, runlog.Progress(steps=start_step), resuming,
                 earlier, start_step, checkpointer)
  with runlog.StopRequest() as stop:
    summary = _train_start(start, stop, train_data, eval_data)
  say(runlog.done_line(summary))
  say(f"run directory: {os.path.abspath(start.out.path)}")
  return summary


def _train_start(s: _Start, stop: runlog.StopRequest, train_data, eval_data) -> dict:
  """Compiles, initializes or restores, trains, and writes the summary however that ends."""
  crash = None
  try:
    state = s.engine.prepare(s.progress, s.run_info, s.say, s.checkpointer if s.resuming else None,
                             s.start_step, train_data)
  except ConfigError:  # the step does not fit, a corrupt checkpoint: the directory is as it was
    if s.checkpointer is not None:
      s.checkpointer.close()
    raise
  except BaseException as e:  # a crash while compiling or allocating: the run directory says so
    crash = e
  out = s.begin()
  save_error = None
  try:
    if crash is not None:
      raise crash
    s.engine.begun(out, s.run_info)
    _train(s, stop, train_data, eval_data, state)
  except BaseException as e:
    s.progress.fail(e)
    raise
  finally:
    if s.checkpointer is not None:
      try:
        s.checkpointer.close()  # waits for a save in flight: the last good checkpoint is complete
      except Exception as e:  # that save failed (e.g. a full disk): the summary still says so
        save_error = e
        if s.progress.error is None:
          s.progress.fail(e)
    summary = s.summary()
    rundir_lib.write_summary(out, summary, failing=s.progress.error is not None)
  if save_error is not None:
    raise save_error
  return summary


def _train(s: _Start, stop: runlog.StopRequest, train_data, eval_data, state) -> None:
  engine, c, p = s.engine, s.engine.config, s.progress
  if engine.any_process(stop.signal_name is not None):
    p.stopped(stop.signal_name, before_first_step=True)
    return
  batch = engine.put(train_data.batch(s.start_step))
  p.status, p.phase = "training", "train"
  saving = s.checkpointer is not None and s.checkpointer.enabled
  # With steps queued ahead the prefetcher also transfers batches, overlapping the device's work.
  # One step at a time (JAX), it makes them on the host and the loop transfers each once the step
  # before is done: a batch put on the device while a step runs lands past that step's
  # temporaries and, once they are freed, splits the free memory, so a step that fits alone
  # finds no block for its temporaries (seen on an H200: benchmarks/RESULTS.md).
  if engine.transfer_ahead:
    make, transfer = (lambda step: engine.put(train_data.batch(step))), None
  else:
    make, transfer = train_data.batch, engine.put
  loop = Loop(engine, s.out, p, stop, s.say, s.peak, s.run_info["flops_per_token"],
              evaluate=engine.evaluator(eval_data) if eval_data is not None else None,
              checkpointer=s.checkpointer if saving else None,
              trace=engine.trace(s.out.path, config_lib.profile_steps(c, s.start_step)),
              transfer=transfer)
  prefetch = data_lib.Prefetcher(make, s.start_step + 1, c.steps)
  try:
    loop.run(state, batch, prefetch, s.start_step)
  finally:
    prefetch.close()
    loop.trace.stop()
    if loop.trace.steps is not None:
      s.run_info["profile"] = loop.trace.describe(s.out.path)
      s.out.write("run.json", s.run_info)


@dataclasses.dataclass
class Loop:
  """Runs steps start_step+1 .. c.steps and writes each down. Queued ahead (engine.queue_ahead),
  a step is dispatched before the one before is read, and timed from the end of that one; one at
  a time, it is timed from its dispatch, its batch transferred then (`transfer`) when the
  prefetcher did not. Inline (a dispatch runs the step to its end), a step is written down before
  the next is dispatched, so that its time is its transfer, its run and the read of its outputs
  only."""
  engine: Engine
  out: rundir_lib.RunDir
  p: runlog.Progress
  stop: runlog.StopRequest
  say: Callable
  peak: Any
  flops_per_token: int
  evaluate: Callable | None
  checkpointer: Any
  trace: Any
  transfer: Callable | None

  def run(self, state, batch, prefetch, start_step: int) -> None:
    engine, c = self.engine, self.engine.config
    inline, queue_next = engine.runs_inline, engine.queue_ahead
    self.trace.before_dispatch(start_step + 1)
    start = t_prev = time.perf_counter()
    pending = engine.dispatch(state, batch, start_step + 1)
    for i in range(start_step, c.steps):
      step, last = i + 1, i + 1 == c.steps
      state, metrics = pending
      pending = None  # the read below then frees this step's outputs before the next dispatch
      if inline:  # the step is done: it ends before the stop agreement and the next batch's wait
        metrics, step_time, t_prev = _read_step(engine, metrics, t_prev)
      # A stop request is honoured between steps: the step in flight is finished, recorded and
      # (with checkpoints on) saved. Every process must agree on it.
      stopping = engine.any_process(self.stop.signal_name is not None)
      next_batch, data_wait_s = prefetch.get(step) if not last and not stopping else (None, 0.0)
      eval_due = self.evaluate is not None and (step % c.eval.every == 0 or last)
      save_due = self.checkpointer is not None and (self.checkpointer.due(step) or stopping or last)
      # Most steps queue the next one before reading their own outputs, so the device never
      # waits for the host's bookkeeping. Steps whose state an evaluation or a save needs (the
      # next step takes it: donated), the first and last traced steps, and every step of a run
      # with no room for two steps' temporaries wait instead.
      ahead = (queue_next and next_batch is not None and not eval_due and not save_due
               and not self.trace.boundary(step))
      if ahead:
        pending = engine.dispatch(state, next_batch, step + 1)
      if not inline:
        metrics, step_time, t_prev = _read_step(engine, metrics, t_prev)
      self.trace.after_step(step)
      record = self.write_down(state, step, metrics, step_time, data_wait_s, eval_due, save_due)
      record["timed"] = (i - start_step >= c.warmup_steps_excluded and not self.trace.traced(step)
                         and not metrics.get("notes"))
      dispatch_next = not ahead and next_batch is not None and _finite(record)
      if dispatch_next and not inline:  # the device works while this step is written down
        pending, t_prev = self.dispatch(state, next_batch, step + 1, record, step_time)
        next_batch = None  # the runtime holds the batch until its step is done, then frees it
      self.append(record, step_time)
      if not _finite(record):
        self.say(runlog.progress_line(record, c.steps, None))
        raise Diverged(step, record["loss"], record["grad_norm"])
      if last or i == start_step or (c.log_every and step % c.log_every == 0) or stopping:
        eta = (time.perf_counter() - start) / (i + 1 - start_step) * (c.steps - step)
        self.say(runlog.progress_line(record, c.steps, eta), flush=True)
      if dispatch_next and inline:
        pending, t_prev = self.dispatch(state, next_batch, step + 1, None, step_time)
        next_batch = None
      if stopping and not last:
        self.p.stopped(self.stop.signal_name)
        if self.checkpointer is not None:
          self.say(f"  saved a checkpoint of step {step}: rerun the same command to resume")
        break
    else:
      self.p.finished()
    engine.finish(state)

  def write_down(self, state, step: int, metrics: dict, step_time: float, data_wait_s: float,
                 eval_due: bool, save_due: bool) -> dict:
    """The step's metrics.jsonl line, with the evaluation and the save it was due (each timed
    apart, in no step's time)."""
    c = self.engine.config
    loss, grad_norm = metrics["loss"], metrics["grad_norm"]
    finite = math.isfinite(loss) and math.isfinite(grad_norm)
    record = runlog.step_record(step, loss, grad_norm, metrics["lr"], step_time,
                                c.batch_size * c.seq_len, self.engine.n_devices,
                                self.flops_per_token, self.peak.tflops)
    record["data_wait_s"] = data_wait_s
    if eval_due and finite:
      t0 = time.perf_counter()
      record["eval_loss"] = self.evaluate(state)
      record["eval_s"] = time.perf_counter() - t0
    if save_due and finite:
      t0 = time.perf_counter()
      self.engine.save(self.checkpointer, step, state, c.to_dict())
      record["checkpoint_save_s"] = time.perf_counter() - t0
      self.p.checkpoint_s += record["checkpoint_save_s"]
    if self.trace.traced(step):
      record["profiled"] = True
    record.update(metrics.get("notes") or {})  # what left the step out of the timing
    return record

  def append(self, record: dict, step_time: float, timed: bool = True) -> None:
    self.out.append_metrics(record)
    if record["timed"] and timed:
      self.p.step_times.append(step_time)
    self.p.steps, self.p.final_loss = record["step"], record["loss"]

  def dispatch(self, state, batch, step: int, record: dict | None, step_time: float):
    """(the step's pending outputs, its start time): the step dispatched, its batch first
    transferred when the prefetcher did not (in the step's time: nothing overlaps the transfer
    then). When the dispatch fails, `record` (the step before, done and maybe saved: a resume
    starts after it) is written down first."""
    try:
      self.trace.before_dispatch(step)
      t_start = time.perf_counter()
      if self.transfer is not None:
        batch = self.transfer(batch)
      return self.engine.dispatch(state, batch, step), t_start
    except BaseException:
      if record is not None:
        self.append(record, step_time, timed=False)
      raise


def _finite(record: dict) -> bool:
  return math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"])


def _read_step(engine: Engine, outputs, t_prev: float) -> tuple[dict, float, float]:
  """(the step's outputs on the host, its time since t_prev, now): waits for the step."""
  metrics = engine.read(outputs)
  t_now = time.perf_counter()
  return metrics, t_now - t_prev, t_now
