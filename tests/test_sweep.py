"""`jaxbench sweep`, `jaxbench report` and TensorBoard scalars.

One real sweep of three nano points (ok, timeout, bad_config), killed while its second point runs
and run again, is shared by the tests that need real runs; everything else is in-process."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, cli_env, read_events, read_json, spawn

from jaxbench import config as config_lib
from jaxbench import outcome as outcome_lib
from jaxbench import report as report_lib
from jaxbench import rundir as rundir_lib
from jaxbench import sweep as sweep_lib
from jaxbench import sweepfile
from jaxbench.errors import ConfigError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NANO = os.path.join(REPO, "configs", "mpt.py") + ":nano"

# steps=8 and peak_tflops=1 as in test_compare: the same step, so the shared XLA cache serves it.
SWEEP_FILE = f'''
def get_sweep():
  return {{
      "base": "{NANO}",
      "fixed": {{"log_every": 0, "peak_tflops": 1.0, "tensorboard": True}},
      "zip": {{"dtype": ["float32", "float32", "float16"], "steps": [8, 100000, 8],
               "timeout_s": [600, 3, 600]}},
  }}
'''


def write_sweep(tmp_path, text, name="s.py"):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def sweep_command(sweep_file, out):
  return [sys.executable, "-m", "jaxbench", "sweep", f"--sweep={sweep_file}", f"--out={out}"]


def result_lines(out):
  path = os.path.join(out, "results.jsonl")
  return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
  """The sweep killed (SIGKILL) while its second point runs, then the same command again."""
  tmp = tmp_path_factory.mktemp("sweep")
  sweep_file = write_sweep(tmp, SWEEP_FILE)
  out = str(tmp / "out")
  env = cli_env(tmp)
  proc = spawn(sweep_command(sweep_file, out), cwd=str(tmp), env=env, stdout=subprocess.PIPE,
               stderr=subprocess.STDOUT, text=True)
  deadline = time.monotonic() + 600
  while not result_lines(out):
    assert proc.poll() is None, proc.stdout.read()
    assert time.monotonic() < deadline
    time.sleep(0.2)
  first = result_lines(out)[0]
  killed_dir = os.path.join(out, "points", sweepfile.build(sweep_file).points[1].id)
  while not os.path.exists(os.path.join(killed_dir, "log.txt")):
    assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
    time.sleep(0.1)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  first_log_mtime = os.path.getmtime(os.path.join(out, first["run_dir"], "summary.json"))
  killed = {"lines": result_lines(out), "first_mtime": first_log_mtime}
  rerun = subprocess.run(sweep_command(sweep_file, out), cwd=str(tmp), env=env,
                         capture_output=True, text=True, timeout=600)
  return {"file": sweep_file, "out": out, "killed": killed, "rerun": rerun, "tmp": tmp}


def test_sweep_points_end_with_their_status_and_resume_skips_finished(swept):
  assert swept["rerun"].returncode == 0, swept["rerun"].stderr[-3000:]
  # Killed with one point recorded; the second (killed mid-run) was retried, the first was not.
  assert len(swept["killed"]["lines"]) == 1
  lines = result_lines(swept["out"])
  assert [r["index"] for r in lines] == [0, 1, 2]
  assert len({r["id"] for r in lines}) == 3
  assert "1 already done, 2 to run" in swept["rerun"].stderr
  ok, timeout, bad = lines
  assert os.path.getmtime(os.path.join(swept["out"], ok["run_dir"], "summary.json")) == \
      swept["killed"]["first_mtime"]
  assert ok["status"] == "ok" and ok["error"] is None and ok["returncode"] == 0
  summary = read_json(os.path.join(swept["out"], ok["run_dir"], "summary.json"))
  for key in ("tokens_per_s_per_device_median", "mfu_median", "step_time_s_median", "compile_s",
              "peak_memory_bytes_per_device", "final_loss", "n_params", "backend", "device_kind"):
    assert ok[key] == summary[key] and ok[key] is not None, key
  assert ok["batch_size"] == 8 and ok["framework"] == "jax" and ok["backend"] == "cpu"
  assert ok["overrides"] == {"log_every": 0, "peak_tflops": 1.0, "tensorboard": True,
                             "dtype": "float32", "steps": 8, "timeout_s": 600}
  assert timeout["status"] == "timeout" and timeout["error"]
  assert bad["status"] == "bad_config" and bad["returncode"] == 2
  assert "dtype: 'float16' is not allowed" in bad["error"].splitlines()[-1]
  for r in lines:  # each point's output is in its own directory
    assert os.path.exists(os.path.join(swept["out"], r["log"]))
  # The tables, rewritten as each point ends.
  csv_text = open(os.path.join(swept["out"], "results.csv")).read().splitlines()
  assert csv_text[0].startswith("id,") and len(csv_text) == 4
  md = open(os.path.join(swept["out"], "results.md")).read()
  assert "3/3 points done" in md and "| timeout |" in md and "**bad_config**" in md


def test_dry_run_lists_points_and_what_is_done(swept, tmp_path, capsys):
  assert sweep_lib.main(["jaxbench sweep", f"--sweep={swept['file']}", "--dry_run"]) == 0
  out = capsys.readouterr().out
  assert "3 points" in out and out.count("to run;") == 3
  assert "--config.dtype=float16" in out and "timeout 3s" in out
  assert sweep_lib.main(["jaxbench sweep", f"--sweep={swept['file']}", f"--out={swept['out']}",
                         "--dry_run"]) == 0
  out = capsys.readouterr().out
  assert "done: ok" in out and "done: timeout" in out and "done: bad_config" in out
  assert sweep_lib.main(["jaxbench sweep", f"--sweep={swept['file']}", f"--out={swept['out']}",
                         "--dry_run", "--retry=timeout"]) == 0
  out = capsys.readouterr().out
  assert "to run again (was timeout)" in out and "done: bad_config" in out
  assert sweep_lib.main(["jaxbench sweep", f"--sweep={swept['file']}", "--retry=ok"]) == 2


@pytest.mark.parametrize("body, message", [
    ('{"base": "configs/mpt.py:nano", "axes": {"model.nope": [1, 2]}}',
     "unknown config key 'model.nope'"),
    ('{"base": "configs/mpt.py:nano", "axis": {}}', "unknown entry 'axis'"),
    ('{"base": "configs/mpt.py:nano", "zip": {"steps": [1, 2], "seed": [1]}}',
     "lists of different lengths"),
    ('{"base": "configs/mpt.py:nano", "fixed": {"steps": 2}, "axes": {"steps": [3]}}',
     "in both fixed and axes"),
    ('{"axes": {}}', "'base' must name a config"),
    ('{"base": "configs/nope.py:x"}', "no config file"),
])
def test_bad_sweep_files_exit_2_with_one_line(tmp_path, capsys, body, message):
  path = write_sweep(tmp_path, f"def get_sweep():\n  return {body}\n")
  assert sweep_lib.main(["jaxbench sweep", f"--sweep={path}", f"--out={tmp_path / 'o'}"]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and message in err, err
  assert not os.path.exists(tmp_path / "o")


def test_one_sweep_at_a_time_per_directory(swept, tmp_path, capsys):
  import fcntl
  with open(os.path.join(swept["out"], ".sweep.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running sweep holds it
    assert sweep_lib.main(["jaxbench sweep", f"--sweep={swept['file']}",
                           f"--out={swept['out']}", "--retry=timeout"]) == 2
  assert "another sweep is running there" in capsys.readouterr().err


def test_points_keys_env_and_ids(tmp_path):
  path = write_sweep(tmp_path, '''
def get_sweep():
  return {"base": "configs/mpt.py:nano", "fixed": {"steps": 2},
          "axes": {"model.remat": ["none", "full"], "env.XLA_FLAGS": [None, "--xla_x=1"]},
          "zip": [{"preset": ["nano", "tiny", "nope"], "batch_size": [4, 8, 8]}]}
''')
  sweep = sweepfile.build(path)
  assert len(sweep.points) == 2 * 2 * 3
  p = sweep.points[1]
  assert p.overrides == {"steps": 2, "model.remat": "none", "env.XLA_FLAGS": None,
                         "preset": "tiny", "batch_size": 8}
  assert p.spec.endswith("mpt.py:tiny") and p.env == {"XLA_FLAGS": None}
  assert p.config_args == ["--config.steps=2", "--config.model.remat=none", "--config.batch_size=8"]
  assert p.id.startswith("remat=none,XLA_FLAGS=None,preset=tiny,batch_size=8-")
  assert "XLA_FLAGS" not in sweep_lib.child_env(p.env)
  assert sweep_lib.child_env(sweep.points[3].env)["XLA_FLAGS"] == "--xla_x=1"
  # An unknown preset is one bad point, not a bad sweep; the ids do not depend on the order.
  assert sweep.points[2].problem and "unknown mpt preset 'nope'" in sweep.points[2].problem
  assert sweep.points[0].problem is None
  again = sweepfile.point_id(dict(reversed(list(p.overrides.items()))), sweep.base, False)
  assert again.split("-")[-1] == p.id.split("-")[-1]
  assert sweepfile.point_id(p.overrides, sweep.base, True) != p.id


@pytest.mark.parametrize("rc, log, timed_out, summary, status", [
    (0, "done: finished.", False, {"status": "finished"}, "ok"),
    (0, "", False, None, "crash"),
    (None, "", True, None, "timeout"),
    (2, "jaxbench train: bad input: dtype: 'x' is not allowed", False, None, "bad_config"),
    (3, "jaxbench train: training diverged at step 4", False, None, "diverged"),
    # GPU: XLA's allocator, CUDA, PyTorch.
    (1, "jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to "
        "allocate 17179869184 bytes.", False, None, "oom"),
    (1, "2026-01-01 W external/xla/xla/tsl/framework/bfc_allocator.cc:482] Allocator (GPU_0_bfc) "
        "ran out of memory trying to allocate 2.00GiB", False, None, "oom"),
    (1, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a "
        "total capacity of 79.10 GiB", False, None, "oom"),
    (1, "RuntimeError: CUDA error: out of memory", False, None, "oom"),
    (1, "RuntimeError: HIP error: hipErrorOutOfMemory", False, None, "oom"),
    (1, "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",
     False, None, "oom"),
    # CPU: XLA's allocator (seen here under `ulimit -v`), the OOM killer, Python, C++, mmap.
    (1, "jax.errors.JaxRuntimeError: RESOURCE_EXHAUSTED: Out of memory allocating 930311160 "
        "bytes.", False, None, "oom"),
    (-9, "step 1/10", False, None, "oom"),
    (1, "Traceback (most recent call last):\nMemoryError", False, None, "oom"),
    (-6, "terminate called after throwing an instance of 'std::bad_alloc'", False, None, "oom"),
    (1, "OSError: [Errno 12] Cannot allocate memory", False, None, "oom"),
    # jaxbench train's memory check: out of memory found before allocating (exit 2), so the
    # max_batch search bounds on it; any other exit 2 is bad input.
    (2, "  compiled in 9.1s\njaxbench train: bad input: memory_check: the compiled step needs "
        "95.20 GiB (3.1 GiB of train state and batch, 92.0 GiB of temporaries; XLA's memory "
        "analysis) where each device has 79.10 GiB free; ...", False, None, "oom"),
    (2, "jaxbench train: bad input: memory_check: the train state alone needs 99.20 GiB (float32 "
        "params, ...", False, None, "oom"),
    (2, "jaxbench train: bad input: model.remat: 'x' is not allowed", False, None, "bad_config"),
    # Compilation failed (XLA, torch.compile), not memory.
    (1, "  compiling the train step ...\nTraceback ...\nXlaRuntimeError: INTERNAL: ptxas fatal",
     False, None, "compile_error"),
    (1, "  compiling the train step ...\nTraceback (most recent call last):\nValueError: x",
     False, None, "compile_error"),
    (1, "torch._dynamo.exc.BackendCompilerFailed: backend='inductor' raised", False, None,
     "compile_error"),
    # Out of memory while compiling is out of memory.
    (1, "  compiling the train step ...\nXlaRuntimeError: RESOURCE_EXHAUSTED: ...", False, None,
     "oom"),
    # An allocator warning long before a different error is not out of memory.
    (1, "W bfc_allocator.cc] Allocator (GPU_0_bfc) ran out of memory trying to allocate 2GiB. The "
        "caller indicates that this is not a failure\n" + "  compiled in 1.0s\nstep 1\n" * 40
        + "ValueError: boom", False, None, "crash"),
    # After compiling: a crash.
    (1, "  compiling the train step ...\n  compiled in 1.0s\nstep 1/8\nValueError: boom", False,
     None, "crash"),
    (-11, "  compiled in 1.0s", False, None, "crash"),
])
def test_classify(rc, log, timed_out, summary, status):
  got, reason = outcome_lib.classify(rc, log, timed_out, summary)
  assert got == status, reason
  assert reason


@pytest.mark.parametrize("rc, log, failure, phase, status", [
    # The kind the run recorded decides, whatever the log says (a traceback's text is not read).
    (1, "  compiling the train step ...\n  compiled in 1.0s\nValueError: x", "compile_error",
     "compile", "compile_error"),
    (1, "  compiling the train step ...\nValueError: x", "crash", "init", "crash"),
    (1, "step 1/8\nValueError: RESOURCE_EXHAUSTED in a message", "crash", "train", "crash"),
    (1, "", "oom", "train", "oom"),
    (2, "jaxbench train: bad input: --workdir: the checkpoint of step 4 could not be written",
     "bad_input", "train", "bad_config"),
    (3, "", "diverged", "train", "diverged"),
    # A summary whose failure does not go with the exit is an earlier start's: the log decides.
    (1, "XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory", "diverged", "train", "oom"),
    (3, "", "oom", "train", "diverged"),
    # Killed: no summary of its own; an earlier start's is not read.
    (-9, "step 1/10", "crash", "train", "oom"),
    (-11, "  compiled in 1.0s", "oom", "train", "crash"),
    # The memory check leaves the run directory as it was: its one line decides.
    (2, "jaxbench train: bad input: memory_check: the train state alone needs 99.20 GiB (float32",
     "bad_input", "train", "oom"),
])
def test_classify_reads_the_failure_the_run_recorded(rc, log, failure, phase, status):
  summary = {"status": "failed", "phase": phase, "failure": failure, "error": "ValueError: x"}
  got, reason = outcome_lib.classify(rc, log, False, summary)
  assert got == status, reason


def test_failure_kind_from_the_exception_and_the_phase():
  from jaxbench.errors import ConfigError, Diverged
  kind = outcome_lib.failure_kind
  assert kind(Diverged(3, float("nan"), 1.0), "train") == "diverged"
  assert kind(ConfigError("--workdir", "full"), "train") == "bad_input"
  assert kind(RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 8 bytes"), "init") == "oom"
  assert kind(MemoryError(), "train") == "oom"
  assert kind(ValueError("x"), "compile") == "compile_error"
  assert kind(ValueError("x"), "train") == "crash"
  assert kind(KeyboardInterrupt(), "train") == "stopped"


@pytest.mark.parametrize("capacity, limit, found, probes", [
    (13, 64, 13, [1, 2, 4, 8, 16, 12, 14, 13]),
    (1, 64, 1, [1, 2]),
    (0, 64, None, [1]),
    (100, 8, 8, [1, 2, 4, 8]),
    (6, 8, 6, [1, 2, 4, 8, 6, 7]),
])
def test_search_batch_doubles_then_bisects(capacity, limit, found, probes):
  got, trail = sweep_lib.search_batch(lambda n: "ok" if n <= capacity else "oom", 1, limit)
  assert got == found and [t["multiple"] for t in trail] == probes


def test_search_batch_without_bisection_stops_at_the_last_power_of_two_that_fits():
  # benchmarks/gpu_suite.py's batches: powers of two only
  got, trail = sweep_lib.search_batch(lambda n: "ok" if n <= 50 else "oom", 1, 128, bisect=False)
  assert got == 32 and [t["multiple"] for t in trail] == [1, 2, 4, 8, 16, 32, 64]


class FakeRunner(sweep_lib.Runner):
  """Runs no process: a point "fits" up to `capacity` sequences, else XLA's OOM text."""

  def __init__(self, capacity):
    super().__init__(sweep_lib.Display(1, stream=open(os.devnull, "w")))
    self.capacity, self.batches = capacity, []

  def run(self, cmd, env, log_path, timeout_s, label):
    batch = int([a for a in cmd if a.startswith("--config.batch_size=")][-1].split("=")[1])
    workdir = [a for a in cmd if a.startswith("--workdir=")][0].split("=", 1)[1]
    self.batches.append(batch)
    fits = batch <= self.capacity
    os.makedirs(workdir)
    if fits:
      rundir_lib.write_json(os.path.join(workdir, "summary.json"), {"status": "finished"})
    text = "ok" if fits else "XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory"
    with open(log_path, "w") as f:
      f.write(text)
    return {"returncode": 0 if fits else 1, "timed_out": False, "log": text, "duration_s": 0.1}


def test_max_batch_runs_the_point_at_the_largest_batch_and_resumes_its_trail(tmp_path):
  path = write_sweep(tmp_path, 'def get_sweep():\n  return {"base": "configs/mpt.py:nano", '
                               '"axes": {"batch_size": [4]}, "max_batch": {"limit": 16}}\n')
  sweep = sweepfile.build(path)
  point, out = sweep.points[0], str(tmp_path / "out")
  runner = FakeRunner(capacity=22)
  r = sweep_lib.run_point(runner, point, out, sweep.max_batch, "p")
  assert r["status"] == "ok" and r["max_batch"]["batch_size"] == 20
  assert runner.batches == [4, 8, 16, 32, 24, 20, 20]  # 5x fits, 6x does not; then the run
  assert [t["status"] for t in r["max_batch"]["trail"]] == ["ok"] * 3 + ["oom", "oom", "ok"]
  # Run again (a resumed sweep): the probes come from max_batch.jsonl, only the point runs.
  runner.batches = []
  r = sweep_lib.run_point(runner, point, out, sweep.max_batch, "p")
  assert runner.batches == [20] and r["max_batch"]["batch_size"] == 20
  sweep_lib.append_result(out, r)
  tables = "\n".join(report_lib.results_tables(report_lib.load(out)))
  assert "| 20 | 4 | 4: ok, 8: ok, 16: ok, 32: oom, 24: oom, 20: ok |" in tables
  # Nothing fits: the point is oom, with the error.
  tiny = FakeRunner(capacity=2)
  r = sweep_lib.run_point(tiny, point, str(tmp_path / "out2"), sweep.max_batch, "p")
  assert r["status"] == "oom" and "RESOURCE_EXHAUSTED" in r["error"] and tiny.batches == [4]


def test_report_tables_and_plots(swept, tmp_path, capsys):
  out = tmp_path / "report"
  assert report_lib.main(["jaxbench report", swept["out"], f"--out={out}"]) == 0
  text = (out / "report.md").read_text()
  assert "3 points: 1 ok, 1 timeout, 1 bad_config" in text
  assert "### jax / cpu / cpu" in text and "mpt:nano (0.246M)" in text
  assert "| timeout |" in text and "dtype: 'float16' is not allowed" in text
  # dtype and steps varied (zip), one point finished: a table with them as columns side by side,
  # and bars (no model size or batch varied to put on an x axis).
  assert ("| jax / cpu / cpu | mpt:nano (0.246M) | 8 | " in text
          and "| timeout | bad_config |" in text), text
  import matplotlib.image
  pngs = sorted(p.name for p in out.glob("*.png"))
  assert pngs == ["memory_bars.png", "mfu_bars.png", "throughput_bars.png"]
  for name in pngs:
    assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
    assert matplotlib.image.imread(str(out / name)).shape[0] > 100
    assert f"]({name})" in text
  assert "wrote" in capsys.readouterr().out


def test_report_without_matplotlib_writes_tables_and_says_so(swept, tmp_path, monkeypatch, capsys):
  monkeypatch.setitem(sys.modules, "matplotlib", None)
  assert report_lib.main(["jaxbench report", swept["out"], f"--out={tmp_path}"]) == 0
  assert "matplotlib is not installed" in capsys.readouterr().err
  text = (tmp_path / "report.md").read_text()
  assert "No plots: matplotlib is not installed" in text and "| mpt:nano (0.246M) |" in text
  assert not list(tmp_path.glob("*.png"))
  assert report_lib.main(["jaxbench report", str(tmp_path / "none")]) == 2


def test_tensorboard_scalars_hold_every_metric(swept):
  run_dir = os.path.join(swept["out"], result_lines(swept["out"])[0]["run_dir"])
  (events,) = glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))
  scalars = {(step, tag): value for step, tag, value in read_events(events)}
  metrics = rundir_lib.read_metrics(os.path.join(run_dir, "metrics.jsonl"))
  assert len(metrics) == 8
  for record in metrics:
    for key, value in record.items():
      if key != "step" and isinstance(value, float):
        assert scalars[(record["step"], key)] == pytest.approx(value, rel=1e-6), key
  assert {tag for _, tag in scalars} >= {"loss", "grad_norm", "lr", "step_time_s", "mfu",
                                         "tokens_per_s_per_device"}


def test_tensorboardx_is_imported_without_torch():
  code = ("import sys; from jaxbench import rundir; rundir.import_tensorboardx(); "
          "assert 'torch' not in sys.modules, 'torch loaded'; import tensorboardX; "
          "w = tensorboardX.SummaryWriter; print('ok')")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                        env={**os.environ, "PYTHONPATH": REPO})
  assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_tensorboard_without_tensorboardx_is_bad_input(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorboardX", None)
  c = config_lib.load_config_file(NANO)
  c.tensorboard = True
  with pytest.raises(ConfigError, match=r"tensorboard: .*pip install 'jaxbench\[tensorboard\]'"):
    config_lib.validate(c, 1)
  with pytest.raises(ConfigError, match="tensorboardX"):
    rundir_lib.RunDir(str(tmp_path / "run"), tensorboard=True)
  assert not os.path.exists(tmp_path / "run")


def test_a_torn_result_line_is_ended_before_the_next_one(tmp_path):
  # A crash while appending leaves a torn last line: the next result starts a line of its own
  # (glued to the fragment, it was lost to every reader and the point ran again on every resume).
  sweep_lib.append_result(str(tmp_path), {"id": "a-0", "index": 0, "status": "ok"})
  with open(tmp_path / "results.jsonl", "a") as f:
    f.write('{"id": "a-1", "index": 1, "sta')
  sweep_lib.append_result(str(tmp_path), {"id": "a-1", "index": 1, "status": "ok"})
  results = sweep_lib.read_results(str(tmp_path))
  assert sorted(results) == [("a-0", 1), ("a-1", 1)] and results[("a-1", 1)]["status"] == "ok"


def test_report_keeps_dtypes_apart(tmp_path):
  # Presets bring their own dtype: points that differ in it are never one table or curve.
  for i, (preset, dtype) in enumerate((("small", "float32"), ("125m", "bfloat16"))):
    sweep_lib.append_result(str(tmp_path), {
        "id": f"p-{i}", "index": i, "overrides": {"preset": preset}, "status": "ok",
        "framework": "jax", "backend": "gpu", "device_kind": "NVIDIA H100", "dtype": dtype,
        "run_dir": f"points/p-{i}/run"})
  groups = [r["group"] for r in report_lib.load(str(tmp_path))]
  assert groups == ["jax / gpu / NVIDIA H100 / float32", "jax / gpu / NVIDIA H100 / bfloat16"]


def test_report_of_a_sweep_where_nothing_ran(tmp_path, capsys):
  sweep_lib.append_result(str(tmp_path), {
      "id": "a-1", "index": 0, "overrides": {"dtype": "float16"}, "status": "bad_config",
      "reason": "exit 2: bad input", "error": "jaxbench train: bad input: dtype: 'float16' ...",
      "run_dir": "points/a-1/run"})
  assert report_lib.main(["jaxbench report", str(tmp_path)]) == 0
  text = (tmp_path / "report.md").read_text()
  assert "1 points: 1 bad_config" in text and "| a-1 | bad_config |" in text
  assert "No plots: no point finished" in text or "No plots: matplotlib" in text


class OrderRunner(sweep_lib.Runner):
  """Runs no process: records which run directory each `jaxbench train` would write, and finishes
  it (or, for batch_size 99, runs out of memory)."""

  def __init__(self):
    super().__init__(sweep_lib.Display(1, stream=open(os.devnull, "w")))
    self.workdirs = []

  def run(self, cmd, env, log_path, timeout_s, label):
    workdir = [a for a in cmd if a.startswith("--workdir=")][0].split("=", 1)[1]
    self.workdirs.append(os.path.relpath(workdir, os.path.dirname(os.path.dirname(workdir))))
    fits = "--config.batch_size=99" not in cmd
    os.makedirs(workdir)
    if fits:
      rundir_lib.write_json(os.path.join(workdir, "summary.json"), {"status": "finished"})
    text = "ok" if fits else "XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory"
    with open(log_path, "w") as f:
      f.write(text)
    return {"returncode": 0 if fits else 1, "timed_out": False, "log": text, "duration_s": 0.1}


def test_repeats_run_interleaved_and_resume(tmp_path, monkeypatch, capsys):
  path = write_sweep(tmp_path, 'def get_sweep():\n  return {"base": "configs/mpt.py:nano", '
                               '"axes": {"batch_size": [4, 8, 99]}, "repeats": 2}\n')
  runner = OrderRunner()
  monkeypatch.setattr(sweep_lib, "Runner", lambda display: runner)
  out = str(tmp_path / "out")
  assert sweep_lib.main(["jaxbench sweep", f"--sweep={path}", f"--out={out}"]) == 0
  a, b, oom = (p.id for p in sweepfile.build(path).points)
  # A B C, then A B again (A B A B, not A A B B); the point that ran out of memory is not rerun.
  assert runner.workdirs == [f"{a}/run", f"{b}/run", f"{oom}/run", f"{a}/run-2", f"{b}/run-2"]
  err = capsys.readouterr().err
  assert "6 runs (3 points x 2), 0 already done, 6 to run" in err
  assert f"[2] {oom} (run 2/2): not run: its first run ended oom" in err
  lines = result_lines(out)
  assert [(r["id"], r["repeat"], r["status"]) for r in lines] == [
      (a, 1, "ok"), (b, 1, "ok"), (oom, 1, "oom"), (a, 2, "ok"), (b, 2, "ok")]
  assert lines[3]["run_dir"] == f"points/{a}/run-2" and lines[3]["log"] == f"points/{a}/log-2.txt"
  csv_rows = open(os.path.join(out, "results.csv")).read().splitlines()
  assert csv_rows[0].startswith("id,repeat,") and csv_rows[2].startswith(f"{a},2,")
  md = open(os.path.join(out, "results.md")).read()
  assert "5/6 runs done (3 points x 2 repeats, interleaved)" in md and "| 0 (2/2) |" in md
  # Raising repeats later runs only the new runs, interleaved again; the ids do not change.
  runner.workdirs = []
  assert sweep_lib.main(["jaxbench sweep", f"--sweep={path}", f"--out={out}", "--repeats=3"]) == 0
  assert runner.workdirs == [f"{a}/run-3", f"{b}/run-3"]
  assert sweep_lib.main(["jaxbench sweep", f"--sweep={path}", "--dry_run", f"--out={out}",
                         "--repeats=3"]) == 0
  assert "3 done: ok" in capsys.readouterr().out


@pytest.mark.parametrize("body, flag, message", [
    ('"repeats": 0', "", "repeats=0 must be an integer >= 1"),
    ('"repeats": 2.5', "", "repeats=2.5 must be an integer >= 1"),
    ('"repeats": 1', "--repeats=-1", "--repeats: repeats=-1 must be an integer >= 1"),
    ('"repeats": 2, "compile_only": "h100"', "", "repeats > 1 with compile_only"),
])
def test_bad_repeats_exit_2(tmp_path, capsys, body, flag, message):
  path = write_sweep(tmp_path, f'def get_sweep():\n  return {{"base": "configs/mpt.py:nano", {body}}}\n')
  argv = ["jaxbench sweep", f"--sweep={path}", "--dry_run"] + ([flag] if flag else [])
  assert sweep_lib.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and message in err, err
