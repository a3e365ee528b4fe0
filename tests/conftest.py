"""Shared helpers. Tests run on the CPU; mesh tests fork a process with 8 host devices."""

import importlib.util
import json
import os
import shutil
import subprocess
import struct
import sys
import tempfile

import pytest

# Tests run on the CPU, with JAX's platforms fixed before any test imports JAX (JAX reads
# JAX_PLATFORMS once, on import; importing jaxbench leaves it alone, only a command's start sets
# it: jaxbench/startup.py). Left unset, the CUDA plugin (test extra) ran its CUDA version checks
# on this GPU-less machine, failed them and stayed unregistered, and every later deviceless
# compile in the process failed ("topology not implemented for cuda").
os.environ.setdefault("JAX_PLATFORMS", "cpu")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The twin's and export-hf's tests need torch (the test-torch extra). CI's newest environment has none: PyPI's torch
# for Python 3.12 and later is a CUDA build of several GB, and the CPU build on CI's disk is for
# 3.11. They skip there with this reason; CI's oldest environment sets JAXBENCH_REQUIRE_TORCH=1, so
# a torch missing there fails the run instead.
NO_TORCH = ("needs the test-torch extra (torch, transformers, safetensors), not installed here; CI's "
            "newest environment has none (PyPI's torch for this Python is a multi-GB CUDA build)")
if os.environ.get("JAXBENCH_REQUIRE_TORCH") == "1" and importlib.util.find_spec("torch") is None:
  raise RuntimeError("JAXBENCH_REQUIRE_TORCH=1 but torch is not installed")
# One XLA compilation cache for every jaxbench process the tests start: most of them compile the
# same tiny step, and a cache hit saves seconds each on a 2-core machine. (Only compile time is
# saved; the tests assert nothing about it.)
COMPILE_CACHE = os.environ.get("JAXBENCH_TEST_COMPILE_CACHE") or tempfile.mkdtemp(
    prefix="jaxbench-test-xla-cache-")


def cli_env(tmp_path, **extra) -> dict:
  env = dict(os.environ)
  env.update({"JAX_PLATFORMS": "cpu", "JAXBENCH_CACHE_DIR": str(tmp_path / "cache"),
              "JAX_COMPILATION_CACHE_DIR": COMPILE_CACHE,
              "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
              "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
              "PYTHONPATH": REPO + os.pathsep + env.get("PYTHONPATH", "")})
  env.update({k: str(v) for k, v in extra.items()})
  return env


def run_cli(args, tmp_path, timeout=600, **env):
  """`python -m jaxbench <args>` in a fresh process; returns CompletedProcess (text)."""
  return subprocess.run([sys.executable, "-m", "jaxbench", *args], cwd=str(tmp_path),
                        env=cli_env(tmp_path, **env), capture_output=True, text=True,
                        timeout=timeout)


def read_events(path):
  """(step, tag, value) of every scalar in a TensorBoard event file: TFRecord framing (length,
  its CRC, the record, its CRC) around Event protos."""
  from jaxbench import rundir
  rundir.import_tensorboardx()  # without torch
  from tensorboardX.proto import event_pb2
  data, i, out = open(path, "rb").read(), 0, []
  while i < len(data):
    (n,) = struct.unpack("<Q", data[i:i + 8])
    event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
    out += [(event.step, v.tag, v.simple_value) for v in event.summary.value]
    i += 12 + n + 4
  return out


def read_json(path):
  with open(path) as f:
    return json.load(f)


@pytest.fixture
def cli(tmp_path):
  return lambda *args, **kw: run_cli(list(args), tmp_path, **kw)


_spawned = []


def spawn(*args, **kwargs) -> subprocess.Popen:
  """subprocess.Popen for long runs a test stops itself; whatever is still running when the test
  ends (a failed assertion, a timeout) is killed, with its process group when it has its own."""
  proc = subprocess.Popen(*args, **kwargs)
  _spawned.append((proc, kwargs.get("start_new_session", False)))
  return proc


@pytest.fixture(autouse=True)
def _reap_spawned():
  yield
  while _spawned:
    proc, own_group = _spawned.pop()
    if proc.poll() is None:
      if shutil.which("pkill"):  # launch.sh's processes run in sessions of their own
        subprocess.run(["pkill", "-9", "-P", str(proc.pid)], check=False)
      try:
        if own_group:
          os.killpg(proc.pid, 9)
        else:
          proc.kill()
      except ProcessLookupError:
        pass
      proc.wait()
