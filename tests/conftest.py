"""Shared helpers. Tests run on the CPU; mesh tests fork a process with 8 host devices."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cli_env(tmp_path, **extra) -> dict:
  env = dict(os.environ)
  env.update({"JAX_PLATFORMS": "cpu", "JAXBENCH_CACHE_DIR": str(tmp_path / "cache"),
              "PYTHONPATH": REPO + os.pathsep + env.get("PYTHONPATH", "")})
  env.update({k: str(v) for k, v in extra.items()})
  return env


def run_cli(args, tmp_path, timeout=600, **env):
  """`python -m jaxbench <args>` in a fresh process; returns CompletedProcess (text)."""
  return subprocess.run([sys.executable, "-m", "jaxbench", *args], cwd=str(tmp_path),
                        env=cli_env(tmp_path, **env), capture_output=True, text=True,
                        timeout=timeout)


def read_json(path):
  with open(path) as f:
    return json.load(f)


@pytest.fixture
def cli(tmp_path):
  return lambda *args, **kw: run_cli(list(args), tmp_path, **kw)
