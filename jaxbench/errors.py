"""Exit codes of the contract and the exceptions that map onto them."""

import sys

EXIT_OK = 0
EXIT_BAD_INPUT = 2  # flags, config or data: one line on stderr, nothing compiled
EXIT_DIVERGED = 3  # non-finite loss: the step is named


class ConfigError(ValueError):
  """A bad input value: `key` is the dotted config key (or flag), the message says what is allowed."""

  def __init__(self, key: str, message: str | None = None):
    # One argument: re-raised by a library with the formatted text as its only argument.
    super().__init__(key if message is None else f"{key}: {message}")
    self.key = key if message is not None else None


# The one bad-input type, under the name that reads better where no config key is at fault (a
# sweep file, a run directory, a flag of a command without a config): raise BadInput(message).
BadInput = ConfigError


def bad_input(prog: str, error: BaseException | str) -> int:
  """Every command's answer to bad input: one line on stderr, `<prog>: bad input: <why>`, and
  EXIT_BAD_INPUT for its main to return (nothing compiled, nothing written)."""
  print(f"{prog}: bad input: {error}", file=sys.stderr)
  return EXIT_BAD_INPUT


class Diverged(RuntimeError):
  """The loss (or gradient norm) became non-finite at `step`."""

  def __init__(self, step: int, loss: float, grad_norm: float):
    super().__init__(f"training diverged at step {step}: loss={loss}, grad_norm={grad_norm}")
    self.step = step


def first_line(e: BaseException) -> str:
  """An error's first line (at most 300 characters), or its type's name when it has no text: the
  one line a report or a bad-input message shows."""
  text = str(e).strip()
  return (text.splitlines()[0] if text else type(e).__name__)[:300]


def agreed(fn, any_process):
  """fn()'s value, where several processes must take one path: when fn raised ConfigError on any
  process, every process raises one (the others' names the key and sends the reader to the
  process that said why), so none is left waiting in a collective for a process that has left.
  `any_process(flag)`: the framework's "true on any process" reduction."""
  error, value = None, None
  try:
    value = fn()
  except ConfigError as e:
    error = e
  if any_process(error is not None):
    raise error or ConfigError("another process of this run found bad input; its own message "
                               "says which")
  return value
