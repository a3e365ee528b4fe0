"""What the compiled step communicates, read from its optimized HLO text.

The counts and bytes of each collective are what a portability study compares between NCCL and
RCCL (or gloo on CPU). Bytes are the size of each collective's result (for all-gather the gathered
array, for reduce-scatter the scattered shard), summed over the module; a collective inside a loop
body (scan over layers, microbatches) is counted once, as XLA writes it.
"""

from __future__ import annotations

import math
import re

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2, "f16": 2,
          "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
          "c128": 16}
# `%name = <shape> <op>(` where op is a collective or its async `-start` half.
_OP = re.compile(r"=\s*(?P<shape>\(.*?\)|\S+)\s+(?P<op>" + "|".join(COLLECTIVES)
                 + r")(?P<start>-start)?\(")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")


def _arrays_bytes(shape: str) -> list[int]:
  sizes = []
  for dtype, dims in _ARRAY.findall(shape):
    if dtype not in _BYTES:
      continue
    count = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
    sizes.append(count * _BYTES[dtype])
  return sizes


def collectives(hlo_text: str) -> dict[str, dict[str, int]]:
  """{kind: {"count": n, "bytes": b}} for each collective kind, zeros included."""
  summary = {kind: {"count": 0, "bytes": 0} for kind in COLLECTIVES}
  for line in hlo_text.splitlines():
    match = _OP.search(line)
    if not match:
      continue
    sizes = _arrays_bytes(match["shape"])
    if match["start"] and match["op"] == "all-gather" and len(sizes) >= 2:
      sizes = sizes[len(sizes) // 2:]  # ((operands...), (results...)): count the results
    elif match["start"] and match["op"] == "collective-permute" and len(sizes) >= 2:
      sizes = [sizes[1]]  # (operand, result, contexts...): count the result
    summary[match["op"]]["count"] += 1
    summary[match["op"]]["bytes"] += sum(sizes)
  return summary
