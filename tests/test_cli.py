"""The command-line layer every command shares: one bad-input type, one line and exit 2 for it
(errors.bad_input), one way to parse plain flags (cli.FlagParser)."""

import subprocess
import sys

import pytest
from conftest import cli_env

from jaxbench import cli, compare, errors, report, sweepfile


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
