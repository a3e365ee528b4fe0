"""The harness's rules with an engine of plain Python (no framework): what both frameworks' runs
share by construction (harness.py)."""

import math
import types

import pytest
from conftest import read_json

from jaxbench import config as config_lib
from jaxbench import harness, rundir
from jaxbench.errors import Diverged


class Trace:
  steps = None

  def before_dispatch(self, step):
    pass

  def after_step(self, step):
    pass

  def boundary(self, step):
    return False

  def traced(self, step):
    return False

  def stop(self):
    pass


class FakeEngine:
  """Steps that run on the calling thread (inline); `losses` by step (default 1/step)."""
  banner, framework, is_writer, n_devices = "fake", "fake", True, 1
  queue_ahead, runs_inline, transfer_ahead = False, True, True

  def __init__(self, c, losses=None):
    self.config, self.losses, self.events = c, losses or {}, []

  def any_process(self, flag):
    return flag

  def from_process_0(self, value):
    return value

  def workdir_label(self):
    return "fake"

  def describe(self, workdir, train_data, say):
    peak = types.SimpleNamespace(tflops=1.0, source="test", detail="")
    return {"config": self.config.to_dict(), "n_params": 10, "flops_per_token": 60}, peak

  def checkpointer(self, workdir):
    raise AssertionError("no checkpoints in these tests")

  def prepare(self, p, run_info, say, restore, start_step, train_data):
    self.events.append("prepare")
    p.compile_s = 1.0
    return 0  # the state: steps done

  def begun(self, out, run_info):
    pass

  def put(self, batch):
    return batch

  def dispatch(self, state, batch, step):
    self.events.append(f"dispatch {step}")
    return state + 1, step

  def read(self, step):
    return {"loss": self.losses.get(step, 1.0 / step), "grad_norm": 1.0, "lr": 0.1}

  def evaluator(self, eval_data):
    return lambda state: float(state)

  def save(self, checkpointer, step, state, config_dict):
    raise AssertionError("no checkpoints in these tests")

  def trace(self, workdir, steps):
    return Trace()

  def finish(self, state):
    self.events.append(f"finish {state}")

  def summary_facts(self):
    return {"peak_memory": (None, "none"), "backend": "fake", "device_kind": "fake"}


class Data:
  def batch(self, step):
    return step


def nano(**overrides):
  return config_lib.load_with_overrides("configs/mpt.py:nano", {
      "steps": 5, "warmup_steps_excluded": 2, "log_every": 0, "eval.every": 2, **overrides})


def test_the_harness_times_steps_by_its_rules_for_any_engine(tmp_path, monkeypatch):
  engine = FakeEngine(nano())
  real_append = rundir.RunDir.append_metrics
  monkeypatch.setattr(rundir.RunDir, "append_metrics",
                      lambda self, r: (engine.events.append(f"record {r['step']}"),
                                       real_append(self, r)))
  summary = harness.run(engine, str(tmp_path / "run"), Data(), Data())
  assert summary["status"] == "finished" and summary["phase"] == "done"
  assert summary["failure"] is None and summary["framework"] == "fake"
  assert summary["compile_s"] == 1.0 and summary["timed_steps"] == 3  # 2 warm-up steps left out
  records = rundir.read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
  assert [r["timed"] for r in records] == [False, False, True, True, True]
  # Evaluations every 2 steps and at the last, of the state after that step, timed apart.
  assert [(r["step"], r.get("eval_loss")) for r in records if "eval_s" in r] == [
      (2, 2.0), (4, 4.0), (5, 5.0)]
  # Inline steps: each is written down before the next is dispatched.
  assert engine.events == ["prepare", *(f"{e} {s}" for s in range(1, 6)
                                       for e in ("dispatch", "record")), "finish 5"]
  assert read_json(tmp_path / "run" / "summary.json") == summary
  # Started again: nothing to do.
  assert harness.run(FakeEngine(nano()), str(tmp_path / "run"), Data(), None) == summary


def test_a_non_finite_loss_stops_the_run_at_that_step_for_any_engine(tmp_path):
  engine = FakeEngine(nano(), losses={3: math.nan})
  with pytest.raises(Diverged, match="step 3"):
    harness.run(engine, str(tmp_path / "run"), Data(), None)
  summary = read_json(tmp_path / "run" / "summary.json")
  assert (summary["status"], summary["phase"], summary["failure"]) == ("diverged", "train",
                                                                       "diverged")
  assert summary["steps"] == 3 and engine.events[-1] == "dispatch 3"
