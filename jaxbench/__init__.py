"""jaxbench: one Flax LLM, trained by the same code on every XLA backend, timed honestly."""

import importlib.util
import sys

__version__ = "0.1.0"


def plugin_installed(name: str) -> bool:
  """Whether the JAX PJRT plugin package jax_plugins.<name> is installed (without importing it)."""
  try:
    return importlib.util.find_spec(f"jax_plugins.{name}") is not None
  except ImportError:  # no jax_plugins namespace at all
    return False


# `python -m jaxbench` and `python -m jaxbench.<command>` start here, before the command's module
# imports JAX, with sys.argv[0] "-m" while Python locates that module (documented for -m): the one
# import that configures the process (jaxbench/startup.py). Any other import changes nothing.
if sys.argv[:1] == ["-m"]:
  from jaxbench import startup
  startup.configure()
