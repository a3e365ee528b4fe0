"""What compare, report, study and sweep print and plot with: numbers as table cells (an absent
or non-finite figure reads "unknown", never "nan"), plain-text and Markdown tables, and a
matplotlib figure that leaves the caller's pyplot backend alone."""

from __future__ import annotations

import importlib.util
import math

from jaxbench.errors import BadInput


def finite(x) -> bool:
  """Whether x is a real, finite number (not a bool, not None, not nan or inf)."""
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_count(x) -> str:
  if not finite(x):
    return "unknown"
  return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def fmt_pct(x, digits: int = 1) -> str:
  return f"{x * 100:.{digits}f}%" if finite(x) else "unknown"


def fmt_seconds(x) -> str:
  if not finite(x):
    return "unknown"
  return f"{x * 1e3:.1f} ms" if x < 1 else f"{x:.1f} s"


def fmt_bytes(x) -> str:
  if not finite(x):
    return "unknown"
  for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
    if abs(x) >= size:
      return f"{x / size:.1f} {unit}"
  return f"{x:.0f} B"


def text_table(rows: list[list[str]]) -> str:
  """rows[0] is the header; columns padded to their widest cell, a dashed rule under the header."""
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
  lines.insert(1, "  ".join("-" * w for w in widths))
  return "\n".join(lines)


def md_cell(text) -> str:
  """A Markdown table cell: a '|' escaped and newlines folded, so one value stays one cell."""
  return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(rows: list[list]) -> str:
  """rows[0] is the header."""
  lines = ["| " + " | ".join(md_cell(c) for c in rows[0]) + " |",
           "|" + "|".join(" --- " for _ in rows[0]) + "|"]
  lines += ["| " + " | ".join(md_cell(c) for c in r) + " |" for r in rows[1:]]
  return "\n".join(lines)


# --- Plots ---------------------------------------------------------------------------------------
def have_matplotlib() -> bool:
  try:
    return importlib.util.find_spec("matplotlib") is not None
  except (ImportError, ValueError):  # e.g. sys.modules["matplotlib"] = None
    return False


def require_matplotlib(flag: str = "--out") -> None:
  """BadInput where the plots a flag asks for cannot be drawn: checked before any work."""
  if not have_matplotlib():
    raise BadInput(f"{flag} writes PNG plots with matplotlib, which is not installed: "
                   "pip install 'jaxbench[plots]'")


def figure(rows: int = 1, height: float = 4.8):
  """(figure, its `rows` axes stacked), 8 inches wide. A Figure without pyplot renders with Agg
  and leaves the caller's global backend alone."""
  from matplotlib.figure import Figure
  fig = Figure(figsize=(8, height), layout="constrained")
  return fig, fig.subplots(rows, 1, squeeze=False)[:, 0]
