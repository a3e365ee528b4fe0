"""What the compiled step communicates, and the matmuls it runs, read from its optimized HLO text.

The counts and bytes of each collective are what a portability study compares between NCCL and
RCCL (or gloo on CPU). Bytes are the size of each collective's result (for all-gather the gathered
array, for reduce-scatter the scattered shard), summed over the module; a collective inside a loop
body (scan over layers, microbatches) is counted once, as XLA writes it.

`dots` lists the step's matmuls as XLA runs them, a loop body's once per trip; `einsum_spec`
writes one as an einsum, which benchmarks/matmul_shapes.py times under PyTorch beside XLA.
"""

from __future__ import annotations

import collections
import math
import re
import string

COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")

_BYTES = {"pred": 1, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "s16": 2, "u16": 2, "f16": 2,
          "bf16": 2, "s32": 4, "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8,
          "c128": 16}
# `%name = <shape> <op>(` where op is a collective or its async `-start` half.
_OP = re.compile(r"=\s*(?P<shape>\(.*?\)|\S+)\s+(?P<op>" + "|".join(COLLECTIVES)
                 + r")(?P<start>-start)?\(")
_ARRAY = re.compile(r"\b([a-z]+[0-9]*[a-z0-9]*)\[([0-9,]*)\]")
_DTYPE_NAMES = {"f32": "float32", "bf16": "bfloat16", "f16": "float16", "f64": "float64",
                "s8": "int8", "s32": "int32"}


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


_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) ", re.M)
_VALUE = re.compile(r"%([\w.\-]+) = (\w+)\[([\d,]*)\]")
_OPERAND = r"(?:\S+ )?%([\w.\-]+)"  # `%name`, or `f32[8,4]{1,0} %name` where types are printed
_DOT = re.compile(r"%[\w.\-]+ = (\w+)\[[\d,]*\]\S* dot\(" + _OPERAND + ", " + _OPERAND
                  + r"\)(.*)")
_CALL = re.compile(r"(calls|body|to_apply|condition|true_computation|false_computation)"
                   r"=%([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRIP = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
# A GEMM XLA's GPU backend hands to cuBLAS: a custom call whose backend config holds the dot's
# dimension numbers; its result may be a (result, workspace) tuple, its operands typed or not.
_CUBLAS = re.compile(r'= \(?(\w+)\[[\d,]*\][^ ]* .*?custom-call\((.*?)\), '
                     r'custom_call_target="__cublas\$(?:gemm|lt\$matmul(?:\$f8)?)"(.*)')
_DIMENSIONS = {"lhs_contracting_dims": "lhs_contracting_dimensions",
               "rhs_contracting_dims": "rhs_contracting_dimensions",
               "lhs_batch_dims": "lhs_batch_dimensions", "rhs_batch_dims": "rhs_batch_dimensions"}


def _dims(attrs: str, name: str) -> tuple[int, ...]:
  """A dot's `lhs_contracting_dims={1}`, or a cuBLAS call's `"lhs_contracting_dimensions":["1"]`."""
  m = re.search(name + r"=\{([\d,]*)\}", attrs)
  if m is None:
    m = re.search('"' + _DIMENSIONS[name] + r'":\[([\d",]*)\]', attrs)
  return tuple(int(x) for x in m.group(1).replace('"', "").split(",") if x) if m else ()


def _gemms(block: str):
  """(out dtype, lhs name, rhs name, attributes) of each dot and cuBLAS GEMM in a computation."""
  for line in block.splitlines():
    m = _DOT.search(line)
    if m:
      yield m.groups()
      continue
    m = _CUBLAS.search(line)
    if m:
      names = re.findall(r"%([\w.\-]+)", m.group(2))
      # (older XLA prints the backend config as an escaped string)
      yield m.group(1), names[0], names[1], m.group(3).replace('\\"', '"')


def _computations(hlo_text: str) -> tuple[dict[str, str], str | None]:
  """{computation name: its text}, and the entry computation's name."""
  blocks, entry = {}, None
  for chunk in re.split(r"\n(?=(?:ENTRY )?%[\w.\-]+ \()", hlo_text):
    m = _COMPUTATION.match(chunk)
    if m:
      blocks[m.group(1)] = chunk
      entry = m.group(1) if chunk.startswith("ENTRY") else entry
  return blocks, entry


def _callees(line: str):
  """(kind, computation) of each computation an instruction calls: fusions (calls), loops
  (condition, body), reductions (to_apply), conditionals (their branches)."""
  yield from _CALL.findall(line)
  for group in _BRANCHES.findall(line):
    yield from (("branch", name) for name in re.findall(r"%([\w.\-]+)", group))


_INSTRUCTION = re.compile(r"\s*(?:ROOT )?%([\w.\-]+) = ")


def matmul_ops(hlo_text: str) -> set[str]:
  """Names of the instructions that run a matmul: dots, cuBLAS calls, and fusions with a dot
  inside (at any depth). These are the op names of a CPU trace, and a GPU trace names a fusion's
  kernel after them (profiling.kernel_names); jaxbench.profiling sums their time. (A TPU's HLO
  writes many matmuls as convolutions.)"""
  blocks, _ = _computations(hlo_text)
  with_dot = {name for name, block in blocks.items() if any(True for _ in _gemms(block))}
  while True:  # a fusion whose computation holds a fusion with a dot holds a dot too
    more = {name for name, block in blocks.items() if name not in with_dot
            and any(kind == "calls" and callee in with_dot
                    for line in block.splitlines() for kind, callee in _callees(line))}
    if not more:
      break
    with_dot |= more
  found = set()
  for block in blocks.values():
    for line in block.splitlines():
      m = _INSTRUCTION.match(line)
      if m and (_DOT.search(line) or _CUBLAS.search(line)
                or any(kind == "calls" and callee in with_dot for kind, callee in _callees(line))):
        found.add(m.group(1))
  return found


def control_flow_ops(hlo_text: str) -> set[str]:
  """Names of the loops, calls and conditionals: a CPU trace's event for one spans ops that are
  events of their own, so a sum over events leaves them out."""
  return {m.group(1) for line in hlo_text.splitlines()
          if (m := _INSTRUCTION.match(line)) and re.search(r" (while|call|conditional)\(", line)}


def loops_without_trip_count(hlo_text: str) -> int:
  """How many while loops XLA gives no known trip count (dots() counts their bodies once)."""
  return sum(1 for line in hlo_text.splitlines()
             if re.search(r" while\(", line) and not _TRIP.search(line))


def dots(hlo_text: str) -> collections.Counter:
  """(lhs shape, rhs shape, dimension_numbers, lhs dtype, rhs dtype, out dtype) -> executions a
  step, from the compiled step's optimized HLO: each dot as XLA runs it (after its rewrites; on a
  GPU inside Triton GEMM fusions, or as cuBLAS calls), those in a loop body (a scan over layers)
  counted by the loop's trip count (once where XLA knows none: loops_without_trip_count), both
  branches of a conditional counted. Fused attention kernels (cuDNN's) are not dots."""
  blocks, entry = _computations(hlo_text)
  # (instruction names are unique within an HLO module)
  shapes = {name: (dtype, tuple(int(d) for d in dims.split(",") if d))
            for name, dtype, dims in _VALUE.findall(hlo_text)}
  runs = collections.Counter()

  def visit(name: str, times: int) -> None:
    runs[name] += times
    for line in blocks.get(name, "").splitlines():
      trip = _TRIP.search(line)
      for kind, callee in _callees(line):
        visit(callee, times * (int(trip.group(1)) if trip and kind == "body" else 1))

  visit(entry, 1)
  counts = collections.Counter()
  for name, block in blocks.items():
    for out_dtype, lhs, rhs, attrs in _gemms(block):
      (ld, ls), (rd, rs) = shapes[lhs], shapes[rhs]
      dims = ((_dims(attrs, "lhs_contracting_dims"), _dims(attrs, "rhs_contracting_dims")),
              (_dims(attrs, "lhs_batch_dims"), _dims(attrs, "rhs_batch_dims")))
      key = (ls, rs, dims, *(_DTYPE_NAMES.get(d, d) for d in (ld, rd, out_dtype)))
      if runs[name]:
        counts[key] += runs[name]
  return counts


def dot_flops(lhs_shape, rhs_shape, dims) -> int:
  """2 x the multiply-adds of a dot_general of these operand shapes and dimension numbers."""
  (contracting, _), (_, rhs_batch) = dims
  k = math.prod(lhs_shape[i] for i in contracting)
  batch = math.prod(rhs_shape[i] for i in rhs_batch)
  m, n = (math.prod(shape) // (k * batch) for shape in (lhs_shape, rhs_shape))
  return 2 * batch * m * n * k


def einsum_spec(lhs_rank: int, rhs_rank: int, dims) -> str:
  """The einsum string of a dot_general: batch dims, then lhs free, then rhs free (its order)."""
  (lc, rc), (lb, rb) = dims
  letters = iter(string.ascii_letters)
  lhs, rhs = [None] * lhs_rank, [None] * rhs_rank
  for i, j in zip(lb, rb):
    lhs[i] = rhs[j] = next(letters)
  for i, j in zip(lc, rc):
    lhs[i] = rhs[j] = next(letters)
  for arr in (lhs, rhs):
    for i, x in enumerate(arr):
      if x is None:
        arr[i] = next(letters)
  out = ([lhs[i] for i in lb] + [x for i, x in enumerate(lhs) if i not in lb and i not in lc]
         + [x for i, x in enumerate(rhs) if i not in rb and i not in rc])
  return f"{''.join(lhs)},{''.join(rhs)}->{''.join(out)}"
