"""The host allocator setting (jaxbench/hostalloc.py): when `auto` applies it, and that it makes
freed big blocks come back without page faults."""

import json
import subprocess
import sys

import pytest

from conftest import REPO
from jaxbench import hostalloc


@pytest.mark.parametrize("framework,platforms,node,on_cpu", [
    ("jax", "cpu", "/dev/nvidiactl", True),  # JAX told to use the CPU on a GPU host
    ("jax", "cuda,cpu", None, False),
    ("jax", "", "/dev/nvidiactl", False),
    ("jax", "", None, True),
    ("torch", "cpu", "/dev/kfd", False),  # JAX_PLATFORMS is JAX's: the twin follows the host
    ("torch", "", None, True),
])
def test_auto_applies_where_the_run_computes_on_the_cpu(framework, platforms, node, on_cpu):
  decided, reason = hostalloc.computes_on_cpu(framework, platforms, node)
  assert decided is on_cpu and reason


def test_accelerator_node_finds_the_first_present(tmp_path):
  (tmp_path / "kfd").touch()
  assert hostalloc.accelerator_node((str(tmp_path / "nvidiactl"), str(tmp_path / "kfd"))) == \
      str(tmp_path / "kfd")
  assert hostalloc.accelerator_node((str(tmp_path / "none"),)) is None


# In a fresh process: the setting holds for the process, and glibc reads it before threads start.
PROBE = """
import json, resource, sys
import numpy as np
from jaxbench import hostalloc
record = hostalloc.configure(sys.argv[1], "jax", "cpu")
faults = []
for _ in range(3):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  block = np.ones(64 * 2**20 // 8)  # 64 MiB: past glibc's largest mmap threshold (32 MiB)
  del block
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"record": record, "again": hostalloc.configure("system"), "faults": faults}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_reuse_keeps_freed_blocks_and_system_does_not():
  def probe(mode):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    return json.loads(out)

  reuse, system = probe("reuse"), probe("system")
  assert reuse["record"]["applied"] and reuse["record"]["set"] == {
      "M_MMAP_MAX": 0, "M_TRIM_THRESHOLD": -1}
  assert reuse["record"]["jax_cpu_async_dispatch"] is False  # steps allocate on the main thread
  assert reuse["again"] == reuse["record"]  # once per process
  # The first block faults its pages in (numpy may ask for huge pages: fewer faults, same
  # pattern); later ones reuse them under `reuse` ...
  first = reuse["faults"][0]
  assert first > 0 and max(reuse["faults"][1:]) < 0.1 * first, reuse["faults"]
  # ... and fault them in again every time as the process started (mmap / munmap).
  assert not system["record"]["applied"]
  assert min(system["faults"]) > 0.5 * system["faults"][0] > 0, system["faults"]
