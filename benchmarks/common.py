"""Shared by the benchmark scripts: jaxbench importable from a checkout, configs with overrides,
and the header every result starts with (machine, date, versions), for benchmarks/RESULTS.md."""

from __future__ import annotations

import os
import statistics
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from jaxbench import config as config_lib  # noqa: E402
from jaxbench import hostalloc  # noqa: E402
from jaxbench import startup  # noqa: E402
from jaxbench import sysinfo  # noqa: E402

# A benchmark script is a program: JAX's platforms as `jaxbench` chooses them, before the script
# imports JAX (every script imports this module first).
startup.configure()
# The scripts that time steps in-process get the host allocator `jaxbench train` sets by default
# (before any backend starts), so their figures and the CLI's agree.
HOST_ALLOCATOR = hostalloc.configure("auto", "jax")


def load(spec: str, **overrides):
  """A config file + preset with `key.sub=value` overrides given as keyword `key__sub=value`."""
  return config_lib.load_with_overrides(spec, {k.replace("__", "."): v for k, v in overrides.items()})


def header(title: str) -> str:
  import jax
  v = sysinfo.versions()
  host = sysinfo.host()
  return (f"# {title}\n{sysinfo.now_iso()}  {host['cpu']} x {host['cpu_count']} cores  "
          f"{jax.devices()[0].device_kind} ({jax.default_backend()})  python {v['python']}  "
          f"jax {v.get('jax')}  jaxlib {v.get('jaxlib')}  flax {v.get('flax')}  "
          f"optax {v.get('optax')}  XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}  "
          f"host allocator: {'reuse' if HOST_ALLOCATOR['applied'] else 'system'}")


def median(values):
  return statistics.median(values) if values else float("nan")


def mib(n) -> str:
  return "n/a" if n is None else f"{n / 2**20:,.1f}"
