"""The training loop: the step function, the run directory contract, and the exit codes."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from conftest import spawn, cli_env, read_json

from jaxbench import config, data, model, optim, program, rundir, step, train

METRIC_FIELDS = {"step", "loss", "grad_norm", "lr", "step_time_s", "tokens_per_s",
                 "tokens_per_s_per_device", "tflops_per_s_per_device", "mfu"}
SUMMARY_FIELDS = {"steps", "compile_s", "step_time_s_median", "step_time_s_p10", "step_time_s_p90",
                  "tokens_per_s_per_device_median", "mfu_median", "final_loss",
                  "peak_memory_bytes_per_device", "backend", "device_kind", "n_devices", "n_params",
                  "status"}
RUN_FIELDS = {"config", "versions", "backend", "platform_version", "device_kind", "n_devices",
              "process_count", "env", "git", "host", "started_at", "n_params", "flops_per_token",
              "formula", "peak", "attention", "mesh", "compile"}


def nano(family="mpt", **overrides):
  return config.load_with_overrides(f"configs/{family}.py:nano", overrides)


def test_microbatch_accumulation_equals_one_big_batch():
  c = nano("llama", batch_size=8)
  with jax.default_matmul_precision("highest"):
    m = model.Transformer(model.ModelConfig.from_config(c, "xla"))
    tx = optim.make_optimizer(c)
    state = step.init_state(m, tx, jax.random.key(0), c.seq_len)
    train_step = jax.jit(step.make_train_step(m, tx, optim.schedule(c)))
    batch = data.SyntheticData(c).batch(0)  # [1, 8, seq + 1]
    one, m1 = train_step(state, batch)
    four, m4 = train_step(state, batch.reshape(4, 2, -1))
  np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
  np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               one.params, four.params)


def test_synthetic_data_is_a_pure_function_of_seed_and_step():
  c = nano(microbatches=2)
  a, b = data.SyntheticData(c), data.SyntheticData(c)
  np.testing.assert_array_equal(a.batch(7), b.batch(7))
  assert a.batch(7).shape == (2, 4, c.seq_len + 1)
  assert not np.array_equal(a.batch(7), a.batch(8))
  other = data.SyntheticData(nano(seed=1))
  assert not np.array_equal(a.batch(7).reshape(-1), other.batch(7).reshape(-1))
  tokens = a.batch(3).reshape(-1, c.seq_len + 1)
  assert tokens.min() >= 0 and tokens.max() < c.model.vocab_size
  # Markov: every next token is one of its predecessor's successors.
  assert all(tokens[r, t + 1] in a.successors[tokens[r, t]] for r in range(3) for t in range(20))


def test_optimizer_decays_only_matrices():
  c = nano()
  params = {"embedding": 1.0, "layers": {"mlp": {"up": {"kernel": 1.0, "bias": 1.0}},
                                         "attention_norm": {"scale": 1.0}}}
  mask = optim.decay_mask(params, decay_embeddings=False)
  assert mask == {"embedding": False, "layers": {"mlp": {"up": {"kernel": True, "bias": False}},
                                                  "attention_norm": {"scale": False}}}
  sched = optim.schedule(c)
  assert float(sched(0)) == 0.0
  assert float(sched(c.optimizer.warmup_steps)) == pytest.approx(c.optimizer.lr)
  assert float(sched(c.steps)) == pytest.approx(c.optimizer.lr * c.optimizer.min_lr_ratio)


def test_loss_falls_on_learnable_data(tmp_path):
  c = nano(steps=150, peak_tflops=1.0, log_every=0)
  summary = train.run(c, str(tmp_path / "run"))
  records = rundir.read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
  first, last = records[0]["loss"], summary["final_loss"]
  floor = data.SyntheticData(c).entropy_floor()
  assert first == pytest.approx(np.log(c.model.vocab_size), rel=0.05)  # starts near uniform
  assert last < first - 0.6 * (first - floor), (first, last, floor)  # covers most of the gap
  assert [r["step"] for r in records] == list(range(1, 151))


def test_default_run_writes_the_contract_files(tmp_path):
  """`jaxbench train` with no flags at all: the README's first command."""
  proc = subprocess.run([sys.executable, "-m", "jaxbench", "train"], cwd=tmp_path,
                        env=cli_env(tmp_path), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  runs = os.listdir(tmp_path / "runs")
  assert len(runs) == 1
  run_dir = tmp_path / "runs" / runs[0]
  assert str(run_dir) in proc.stdout and "MFU" in proc.stdout and "compiled in" in proc.stdout

  info = read_json(run_dir / "run.json")
  assert RUN_FIELDS <= set(info)
  assert info["n_params"] == model.param_count(
      model.ModelConfig.from_config(config.load_config_file("configs/mpt.py:tiny"), "xla"))["total"]
  assert info["peak"]["source"] == "measured" and info["peak"]["tflops"] > 0
  assert info["compile"]["compile_s"] > 0 and info["versions"]["jax"] == jax.__version__
  # mpt:tiny, seq 128: the xla attention in two blocks of 64 query rows, 3/4 of the scores.
  assert info["attention"]["implementation"] == "xla"
  assert (info["attention"]["query_block_rows"], info["attention"]["query_blocks"],
          info["attention"]["scores_computed"]) == (64, 2, 0.75)
  if sys.platform.startswith("linux"):  # JAX_PLATFORMS=cpu: `auto` sets glibc's malloc
    assert info["host_allocator"]["applied"] and info["host_allocator"]["mode"] == "auto"
    # ... and steps that run inline, so the loop times each from its own dispatch: no step's
    # time holds the next one's (the last step then read ~0 s, the first two steps' worth).
    assert info["queue_ahead"].startswith("off: JAX runs CPU steps on the calling thread")

  records = rundir.read_metrics(str(run_dir / "metrics.jsonl"))
  steps = info["config"]["steps"]
  assert [r["step"] for r in records] == list(range(1, steps + 1))
  times = [r["step_time_s"] for r in records]
  assert min(times[1:]) > 0.25 * float(np.median(times)), times
  for r in records:
    assert METRIC_FIELDS <= set(r)
    assert r["step_time_s"] > 0 and np.isfinite(r["loss"])
    # MFU against the peak this run measured; a step faster than it (the load fell after the
    # measurement) has none, never a figure above 100%.
    assert (0 < r["mfu"] <= 1) if r["mfu"] is not None else r["mfu_above_peak"]
    assert r["tokens_per_s_per_device"] == pytest.approx(r["tokens_per_s"])  # one device
    assert r["tflops_per_s_per_device"] == pytest.approx(
        info["flops_per_token"] * r["tokens_per_s_per_device"] / 1e12)

  summary = read_json(run_dir / "summary.json")
  assert SUMMARY_FIELDS <= set(summary)
  assert summary["status"] == "finished" and summary["steps"] == steps
  assert summary["timed_steps"] == steps - info["config"]["warmup_steps_excluded"]
  if summary["tflops_per_s_per_device_median"] <= info["peak"]["tflops"]:
    assert 0 < summary["mfu_median"] <= 1
    assert summary["mfu_median"] == pytest.approx(
        summary["tflops_per_s_per_device_median"] / info["peak"]["tflops"])
  else:
    assert summary["mfu_median"] is None and "above the measured peak" in summary["mfu_note"]
  timed = sorted(r["step_time_s"] for r in records[info["config"]["warmup_steps_excluded"]:])
  assert summary["step_time_s_median"] == pytest.approx(float(np.median(timed)))
  assert summary["final_loss"] == records[-1]["loss"]
  assert summary["final_loss"] < records[0]["loss"] - 1.0
  assert summary["peak_memory_bytes_per_device"] > 0


BAD_INPUTS = [
    (["--config=configs/mpt.py:nope"], "preset"),
    (["--config=configs/nope.py"], "no config file"),
    (["--config.model.n_heads=5"], "model.n_heads"),
    (["--config.model.n_kv_heads=3"], "model.n_kv_heads"),
    (["--config.microbatches=3"], "microbatches"),
    (["--config.model.attention=flash"], "model.attention"),
    (["--config.model.attention=cudnn"], "model.attention"),
    (["--config.model.remat=sometimes"], "model.remat"),
    (["--config.model.impl=fast"], "model.impl"),
    (["--config.model.attention_block=-64"], "model.attention_block"),
    (["--config.seq_len=4096"], "seq_len"),
    (["--config.dtype=float16"], "dtype"),
    (["--config.mesh.data=3"], "mesh"),
    (["--config.nonexistent=1"], "unknown config key"),
    (["--config.steps=abc"], "config.steps"),
    (["--config.seed=-1"], "seed"),
    (["--config.peak_tflops=inf"], "peak_tflops"),
    (["--config.host_allocator=tcmalloc"], "host_allocator"),
    (["--config.model.norm_eps=-1"], "model.norm_eps"),
    (["--config.optimizer.lr=nan"], "optimizer.lr"),
    (["--config=configs/llama.py:nano", "--config.model.n_kv_heads=3"], "model.n_kv_heads"),
]


@pytest.mark.parametrize("args,needle", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_exits_2_with_one_line(tmp_path, args, needle):
  proc = subprocess.run([sys.executable, "-m", "jaxbench.train", *args, "--workdir=run"],
                        cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 2, proc.stderr
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
  assert needle in lines[0] and lines[0].startswith("jaxbench train: bad input:")
  assert not (tmp_path / "run").exists()  # nothing ran, nothing compiled


def test_nonfinite_loss_exits_3_naming_the_step(tmp_path):
  proc = subprocess.run([sys.executable, "-m", "jaxbench", "train", "--config=configs/mpt.py:nano",
                         "--config.steps=5", "--config.model.init_std=1e30",
                         "--config.peak_tflops=1", "--workdir=run"],
                        cwd=tmp_path, env=cli_env(tmp_path), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 3, proc.stderr[-2000:]
  assert "diverged at step 1" in proc.stderr
  summary = read_json(tmp_path / "run" / "summary.json")
  assert summary["status"] == "diverged" and summary["steps"] == 1
  assert summary["phase"] == "train" and summary["failure"] == "diverged"
  assert SUMMARY_FIELDS <= set(summary) and summary["compile_s"] > 0  # a failed run says what it can
  records = rundir.read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
  assert records[-1]["step"] == 1 and records[-1]["loss"] is None  # NaN is written as null


def test_sigterm_stops_cleanly_after_a_step(tmp_path):
  proc = spawn([sys.executable, "-m", "jaxbench", "train", "--config=configs/mpt.py:nano",
                           "--config.steps=100000", "--config.peak_tflops=1", "--workdir=run",
                           "--config.log_every=1"],
                          cwd=tmp_path, env=cli_env(tmp_path), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  for line in proc.stdout:
    if line.startswith("step") and "/100000" in line and line.split()[1].startswith("5/"):
      break
    assert time.time() < deadline
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  assert "SIGTERM received" in out
  summary = read_json(tmp_path / "run" / "summary.json")
  assert summary["status"] == "stopped (SIGTERM)"
  assert summary["phase"] == "train" and summary["failure"] == "stopped"
  records = rundir.read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
  assert [r["step"] for r in records] == list(range(1, summary["steps"] + 1))


def test_a_workdir_holding_another_finished_run_is_refused(tmp_path, capsys):
  # Without checkpoints an unfinished run there starts over (tests/test_checkpoint.py); a finished
  # one of another config is kept.
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "run.json").write_text('{"config": {"family": "llama"}}')
  (tmp_path / "run" / "summary.json").write_text('{"status": "finished", "steps": 100}')
  assert train.main(["jaxbench train", "--config=configs/mpt.py:nano",
                     f"--workdir={tmp_path / 'run'}"]) == 2
  assert "family='llama'" in capsys.readouterr().err


def test_tensorboard_switched_on_at_a_resume_holds_the_kept_steps(tmp_path):
  from conftest import read_events
  d = rundir.RunDir(str(tmp_path / "r"))
  for n in (1, 2, 3):
    d.append_metrics({"step": n, "loss": float(n), "timed": True})
  d.close()
  resumed = rundir.RunDir(str(tmp_path / "r"), tensorboard=True)
  resumed.truncate_metrics(2)
  resumed.append_metrics({"step": 3, "loss": 30.0, "timed": True})
  resumed.close()
  scalars = sorted((step, value) for path in (tmp_path / "r").glob("events.out.tfevents.*")
                   for step, tag, value in read_events(path) if tag == "loss")
  assert scalars == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_a_finished_run_is_finished_whatever_its_latest_checkpoint(tmp_path):
  # Resumed with checkpoint.every=0, a run finishes with an older checkpoint as its latest.
  c = config.load_config_file("configs/mpt.py:nano").to_dict()
  rundir.write_json(str(tmp_path / "run.json"), {"config": c})
  rundir.write_json(str(tmp_path / "summary.json"), {"status": "finished", "steps": c["steps"]})
  assert rundir.check_resume(str(tmp_path), 2, c, c) == {"status": "finished", "steps": c["steps"]}
  with pytest.raises(rundir.ConfigError, match="model.remat"):
    rundir.check_resume(str(tmp_path), 2, c, {**c, "model": {**c["model"], "remat": "full"}})
  (tmp_path / "summary.json").unlink()
  assert rundir.check_resume(str(tmp_path), 2, c, c) is None  # steps left to train


def test_json_writer_never_writes_nan(tmp_path):
  rundir.write_json(str(tmp_path / "x.json"), {"a": float("nan"), "b": [float("inf"), 1.5]})
  assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [None, 1.5]}
  d = rundir.RunDir(str(tmp_path / "r"))
  d.append_metrics({"step": 1, "loss": 2.0})
  with open(d.file("metrics.jsonl"), "a") as f:
    f.write('{"step": 2, "lo')  # a torn line, as a crash mid-write would leave
  assert rundir.read_metrics(d.file("metrics.jsonl")) == [{"step": 1, "loss": 2.0}]


def test_the_next_step_is_queued_only_with_room_for_a_second_steps_temporaries():
  gib = 2**30
  # mpt-1b on an H200 (XLA's figures, benchmarks/RESULTS.md): batch 8 ran one step and then ran
  # out of memory with queueing on; batch 4 ran.
  limit = int(105.3 * gib)
  batch8 = {"argument_size_in_bytes": int(14.7 * gib), "output_size_in_bytes": int(14.7 * gib),
            "alias_size_in_bytes": int(14.7 * gib), "temp_size_in_bytes": int(59.4 * gib)}
  on, why = program.queue_ahead(batch8, limit)
  assert not on and "one at a time" in why and "133.50 GiB" in why
  assert program.queue_ahead({**batch8, "temp_size_in_bytes": int(33.3 * gib)}, limit) == (True, "on")
  # No allocator limit (the CPU) or no analysis: queued, as before.
  assert program.queue_ahead(batch8, None)[0] and program.queue_ahead({}, limit)[0]
  assert not program.queue_ahead({}, None, runs_inline=True)[0]  # inline steps: never queued


def test_one_step_at_a_time_leaves_only_the_state_on_the_device_at_each_dispatch(
    tmp_path, monkeypatch):
  """Without queueing, a step's temporaries must find the device as the step before left it: a
  batch staged while a step runs, or that step's outputs still held, sit past its temporaries and
  split the memory they free (an H200 step needing 60 of 105 GiB ran out in its second step)."""
  import gc
  monkeypatch.setattr(program, "queue_ahead", lambda *a, **k: (False, "off: test"))
  real_dispatch, extras, first = train.JaxEngine.dispatch, [], []

  def dispatch(self, state, batch, step):
    first[:] = first or [batch]  # the loop holds the first batch throughout
    gc.collect()
    ours = {id(a) for a in jax.tree.leaves((state, batch, first[0])) + before}
    extras.append(sorted((a.shape, str(a.dtype)) for a in jax.live_arrays()
                         if id(a) not in ours))
    return real_dispatch(self, state, batch, step)

  monkeypatch.setattr(train.JaxEngine, "dispatch", dispatch)
  gc.collect()
  before = list(jax.live_arrays())  # held, so that no new array takes one of their ids
  summary = train.run(nano(steps=6, log_every=0), str(tmp_path / "run"))
  assert summary["status"] == "finished"
  assert extras == [[]] * 6, extras


def test_inline_cpu_steps_are_written_down_before_the_next_dispatch(tmp_path, monkeypatch):
  """Where a dispatch runs the CPU step to its end, the loop writes a step's record before it
  dispatches the next one: written after, while nothing ran, the bookkeeping fell in the next
  step's time (benchmarks/harness_overhead.py: 5.3% over a bare loop on mpt:tiny, 2.6% since)."""
  from jaxbench import hostalloc
  real_dispatch, real_append = train.JaxEngine.dispatch, rundir.RunDir.append_metrics
  events, inline = [], set()

  def dispatch(self, state, batch, step):
    events.append("dispatch")
    inline.add(self.runs_inline)
    return real_dispatch(self, state, batch, step)

  def append(self, record):
    events.append(f"record {record['step']}")
    real_append(self, record)

  monkeypatch.setattr(train.JaxEngine, "dispatch", dispatch)
  monkeypatch.setattr(rundir.RunDir, "append_metrics", append)
  # As `jaxbench train` sets it up (host_allocator "reuse"), not a run started in-process.
  monkeypatch.setattr(hostalloc, "cpu_dispatch_async", lambda: False)
  summary = train.run(nano(steps=4, log_every=0), str(tmp_path / "run"))
  assert summary["status"] == "finished"
  queue_ahead = read_json(str(tmp_path / "run" / "run.json"))["queue_ahead"]
  assert queue_ahead.startswith("off: JAX runs CPU steps on the calling thread") and inline == {True}
  assert events == ["dispatch", "record 1", "dispatch", "record 2", "dispatch", "record 3",
                    "dispatch", "record 4"], events
