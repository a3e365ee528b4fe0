"""The cells and tables compare, report, study and sweep share (jaxbench/tables.py)."""

import math

from jaxbench import tables


def test_only_real_finite_numbers_are_figures():
  assert tables.finite(3) and tables.finite(0.5)
  for x in (True, None, "3", math.nan, math.inf):
    assert not tables.finite(x)
  assert [tables.fmt_pct(None), tables.fmt_bytes(math.nan), tables.fmt_count(True)] == ["unknown"] * 3
  assert (tables.fmt_bytes(3 * 2**30), tables.fmt_seconds(0.25), tables.fmt_count(12345.6)) == (
      "3.0 GiB", "250.0 ms", "12,346")


def test_a_markdown_cell_stays_one_cell():
  assert tables.md_table([["a|b", "c"], ["line\nbreak", 2]]).splitlines() == [
      "| a\\|b | c |", "| --- | --- |", "| line break | 2 |"]
  assert tables.text_table([["name", "x"], ["long name", "1"]]).splitlines() == [
      "name       x", "---------  -", "long name  1"]
