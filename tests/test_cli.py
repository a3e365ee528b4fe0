"""The command-line layer every command shares: one bad-input type, one line and exit 2 for it
(errors.bad_input), one way to parse plain flags (cli.FlagParser), and no change to the
environment from importing jaxbench (jaxbench/startup.py is the program's, not the library's)."""

import os
import subprocess
import sys

import pytest
from conftest import cli_env

from jaxbench import cli, compare, errors, report, startup, sweepfile


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_answers_an_unknown_flag_in_one_line_and_exit_2(name, capsys, tmp_path):
  assert cli.main(["jaxbench", name, "--no_such_flag=1"]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"jaxbench {name}: bad input: ") and err.count("\n") == 1, err


def test_one_bad_input_type():
  assert errors.BadInput is errors.ConfigError
  assert compare.BadInput is report.BadInput is sweepfile.BadInput is errors.BadInput
  assert issubclass(errors.BadInput, ValueError)
  assert str(errors.BadInput("--out: exists")) == "--out: exists"


def test_profile_is_a_command_and_python_m_jaxbench_profiling_its_alias(tmp_path):
  missing = str(tmp_path / "no-run")
  assert cli.main(["jaxbench", "profile", missing]) == 2
  proc = subprocess.run([sys.executable, "-m", "jaxbench.profiling", missing], cwd=tmp_path,
                        env=cli_env(tmp_path), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2 and proc.stderr.startswith("jaxbench profile: bad input: ")


def test_importing_jaxbench_leaves_the_environment_alone(tmp_path):
  # Without JAX_PLATFORMS, where a GPU plugin is installed with no GPU (this CPU machine with the
  # test extra's), `import jaxbench` used to set it; now only a program start (cli.main) does.
  env = cli_env(tmp_path)
  env.pop("JAX_PLATFORMS")
  code = ("import os; before = dict(os.environ)\n"
          "import jaxbench, jaxbench.cli, jaxbench.config, jaxbench.compare, jaxbench.sweep\n"
          "assert dict(os.environ) == before, set(os.environ.items()) ^ set(before.items())")
  proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr


def test_cli_main_configures_the_platforms_before_the_command(monkeypatch, capsys):
  calls = []
  monkeypatch.setattr(startup, "configure", lambda: calls.append(1) or {})
  assert cli.main(["jaxbench", "help"]) == 0
  assert calls == [1]


def test_platform_settings():
  assert startup.platform_settings({}, None, tpu=False) == {}
  assert startup.platform_settings({"JAX_PLATFORMS": "cuda"}, "cuda", tpu=False) == {}
  settings = startup.platform_settings({}, "cuda,rocm", tpu=False)
  assert settings["JAX_PLATFORMS"] == "cpu" and "cuda,rocm plugin" in settings[
      "JAXBENCH_PLATFORMS_NOTE"]
  assert startup.platform_settings({}, "cuda", tpu=True)["JAX_PLATFORMS"] == "tpu,cpu"


def test_configure_reaches_jax_when_a_program_imported_it_first(monkeypatch):
  # `python -m jaxbench.peak` imports JAX before its main runs: JAX read JAX_PLATFORMS already.
  import jax
  updates = []
  monkeypatch.setattr(startup, "gpu_plugins_without_gpus", lambda: "cuda")
  monkeypatch.delenv("JAX_PLATFORMS")
  monkeypatch.delenv("JAXBENCH_PLATFORMS_NOTE", raising=False)
  monkeypatch.setattr(jax.config, "update", lambda name, value: updates.append((name, value)))
  assert startup.configure()["JAX_PLATFORMS"] in ("cpu", "tpu,cpu")
  assert os.environ["JAX_PLATFORMS"] == updates[0][1] and updates[0][0] == "jax_platforms"
