"""`jaxbench train`: one training run, timed honestly, written to a run directory.

The path of a run, in order: config -> checks -> mesh -> sharded init -> compile (timed apart)
-> timed steps -> run directory. program.py builds and compiles the step; harness.py runs it, by
the same rules as the PyTorch twin's run; JaxEngine is what JAX brings to it. Usage:

  jaxbench train [--config=configs/mpt.py:tiny] [--config.KEY=VALUE ...] [--workdir=DIR]
"""

from __future__ import annotations

import dataclasses
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
from jaxbench import harness
from jaxbench import hostalloc
from jaxbench import memory as memory_lib
from jaxbench import model as model_lib
from jaxbench import peak as peak_lib
from jaxbench import profiling
from jaxbench import program
from jaxbench import runlog
from jaxbench import sharding
from jaxbench import step as step_lib
from jaxbench import sysinfo
from jaxbench.errors import ConfigError, Diverged


def run(c, workdir: str | None = None, cluster: str = "single process",
        determinism: dict | None = None) -> dict:
  """Trains per config `c`; returns summary.json's contents. Raises ConfigError before compiling
  on bad input (and before allocating the state when the compiled step does not fit), Diverged on
  a non-finite loss."""
  setup = program.build(c)
  train_data = data_lib.make(c, "train")  # bad data fails here, before anything is written
  eval_data = data_lib.make(c, "val") if c.eval.every else None
  engine = JaxEngine(setup, cluster, determinism or program.apply_determinism(c))
  return harness.run(engine, workdir, train_data, eval_data)


class JaxEngine:
  """What JAX brings to the harness: the compiled step (program.py), a pure jitted function of
  (state, batch) with the state donated, run on the mesh of every process's devices."""
  banner = "jaxbench"
  framework = "jax"

  def __init__(self, setup: program.Setup, cluster: str, determinism: dict):
    self.setup, self.config = setup, setup.config
    self.cluster, self.determinism = cluster, determinism
    self.is_writer = jax.process_index() == 0
    self.n_devices = len(setup.devices)
    self.backend = sysinfo.backend(setup.devices)
    self.step: program.CompiledStep | None = None  # once compiled (prepare)

  # How the loop runs the step: decided when it is compiled (program.compile_step).
  @property
  def queue_ahead(self) -> bool:
    return self.step.queue_ahead

  @property
  def runs_inline(self) -> bool:
    return self.step.runs_inline

  @property
  def transfer_ahead(self) -> bool:
    return self.step.queue_ahead

  def any_process(self, flag: bool) -> bool:
    """True on every process when it is true on any: all processes must stop at the same step."""
    if jax.process_count() == 1:
      return flag
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.array([flag]))))

  def from_process_0(self, value: int) -> int:
    """Process 0's `value` on every process: what it read or its clock decides for all."""
    if jax.process_count() == 1:
      return value
    from jax.experimental import multihost_utils
    return int(multihost_utils.broadcast_one_to_all(np.int64(value)))

  def workdir_label(self) -> str:
    return self.setup.devices[0].platform

  def describe(self, workdir: str, train_data, say) -> tuple[dict, peak_lib.Peak]:
    """Prints the run's header; returns (run.json's contents, the peak for MFU)."""
    return _describe(self, workdir, train_data, say)

  def checkpointer(self, workdir: str) -> checkpoint_lib.Checkpointer:
    c = self.config
    return checkpoint_lib.Checkpointer(workdir, c.checkpoint.every, c.checkpoint.keep,
                                       c.checkpoint.async_save)

  def prepare(self, p: runlog.Progress, run_info: dict, say, restore, start_step: int,
              train_data):
    """The step compiled (and checked to fit) before anything is allocated, then the state."""
    self.step = _compile(self, p, run_info, say)
    state = _initial_state(self.setup, p, restore, start_step, say)
    run_info["compile"]["init_s"] = p.init_s
    return state

  def begun(self, out, run_info: dict) -> None:
    if self.config.dump_hlo and out.writer:
      run_info["hlo"] = profiling.dump_hlo(out.path, self.step.lowered,
                                           self.step.compiled.as_text())
      out.write("run.json", run_info)

  def put(self, batch: np.ndarray):
    """The global batch onto the mesh; with several processes each transfers only the rows its
    own devices hold (every process computes the same global batch: a cheap pure function)."""
    sharding_ = self.setup.batch_sharding
    if jax.process_count() == 1:
      return jax.device_put(batch, sharding_)
    return jax.make_array_from_callback(batch.shape, sharding_, lambda index: batch[index])

  def dispatch(self, state, batch, step: int):
    return self.step.compiled(state, batch)

  def read(self, outputs) -> dict:
    metrics = jax.device_get(outputs)
    return {k: float(metrics[k]) for k in ("loss", "grad_norm", "lr")}

  def evaluator(self, eval_data):
    """A function of the state -> mean held-out loss over the same eval.batches batches each
    time."""
    s, c = self.setup, self.config
    jitted = jax.jit(step_lib.make_eval_step(s.model, c.loss_chunk_size),
                     in_shardings=(s.state_shardings.params, s.batch_sharding),
                     out_shardings=sharding.replicated(s.mesh))
    batches = [eval_data.batch(j) for j in range(c.eval.batches)]

    def evaluate(state) -> float:
      with sharding.activation_mesh(s.mesh):
        losses = [jitted(state.params, self.put(b)) for b in batches]
      return float(np.mean(jax.device_get(losses)))

    return evaluate

  def save(self, checkpointer, step: int, state, config_dict: dict) -> None:
    checkpointer.save(step, state, config_dict)

  def trace(self, workdir: str, steps) -> profiling.StepTrace:
    return profiling.StepTrace(workdir, steps)

  def finish(self, state) -> None:
    jax.block_until_ready(state)

  def summary_facts(self) -> dict:
    devices = self.setup.devices
    return {"peak_memory": sysinfo.peak_memory_per_device(devices),
            "backend": self.backend["backend"], "device_kind": devices[0].device_kind}


def _describe(engine: JaxEngine, workdir: str, train_data, say) -> tuple[dict, peak_lib.Peak]:
  setup, c = engine.setup, engine.config
  devices, mesh_shape, attention = setup.devices, setup.mesh_shape, setup.attention
  platform = devices[0].platform
  n_params, counts, flops = setup.n_params, setup.param_counts, setup.flops
  m = c.model
  say(f"jaxbench: {c.family}:{c.preset}  d_model={m.d_model} n_layers={m.n_layers} "
      f"n_heads={m.n_heads} n_kv_heads={m.n_kv_heads} d_ff={m.d_ff} vocab={m.vocab_size} "
      f"seq_len={c.seq_len}")
  say(f"  params {n_params:,} ({n_params / 1e6:.1f}M)  FLOPs/token {flops['flops_per_token']:,} "
      f"({flops['formula']})")
  say(f"  {len(devices)} x {devices[0].device_kind} ({platform}), mesh "
      + " x ".join(f"{a}={s}" for a, s in mesh_shape.items())
      + f", dtype {c.dtype}, attention {attention}, remat {m.remat}, scan {m.scan_layers}"
      + (f", impl {m.impl} (plain autodiff, no hand-written backward passes)"
         if m.impl != "tuned" else ""))
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
      **engine.backend, "distributed": engine.cluster, "mesh": mesh_shape,
      "tensor_groups_within_hosts": tensor_local,
      "logical_axis_rules": [list(r) for r in sharding.LOGICAL_AXIS_RULES],
      "param_partition_specs": sharding.describe_param_specs(setup.state_shardings.params),
      "attention": attention_info,
      "n_params": n_params, "param_counts": counts, **flops,
      "peak": dataclasses.asdict(peak),
      "mfu_note": None if peak.tflops else "no peak known for this device: " + peak.detail,
      "env": sysinfo.relevant_env(), "git": sysinfo.git_commit(), "host": sysinfo.host(),
      "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
      "deterministic": engine.determinism,
      "host_allocator": hostalloc.describe(c.host_allocator),
  }
  return run_info, peak


def _compile(engine: JaxEngine, p: runlog.Progress, run_info: dict,
             say) -> program.CompiledStep:
  """Lowers and compiles the step for the run's abstract state, before anything is allocated, and
  checks that it fits (memory_check): ConfigError naming the figures when it does not."""
  setup, c = engine.setup, engine.config
  say("  compiling the train step ...", flush=True)
  p.status, p.phase = "compiling", "compile"
  step = program.compile_step(setup)
  p.lower_s, p.compile_s = step.lower_s, step.compile_s
  run_info["queue_ahead"] = step.queue_ahead_reason
  run_info["compile"] = step.describe(c, setup.flops)
  say(f"  compiled in {p.lower_s + p.compile_s:.1f}s (lower {p.lower_s:.1f}s + compile "
      f"{p.compile_s:.1f}s)", flush=True)
  if c.memory_check:
    errors.agreed(lambda: _check_fits(setup, step.memory), engine.any_process)
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


# --- command line -------------------------------------------------------------------------------

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
    return errors.bad_input("jaxbench train", e)
  except Diverged as e:
    print(f"jaxbench train: {e}", file=sys.stderr)
    return 3
  return 0


if __name__ == "__main__":
  sys.exit(main())
