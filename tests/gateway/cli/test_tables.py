"""The CLI's one table printer (`gateway.cli.tables`), used by the client and the admin commands."""

from __future__ import annotations

from gateway.cli.tables import format_table


def test_columns_are_as_wide_as_their_widest_cell() -> None:
    """The header, a rule and the rows; each column padded to its widest cell (header included); a column of
    numbers is right-aligned so the digits line up."""
    out = format_table(["name", "ε"], [["analyst", "0.5"], ["a", "10.25"]])
    assert out.splitlines() == ["name         ε", "-------  -----", "analyst    0.5", "a        10.25"]


def test_numbers_with_intervals_and_text_columns() -> None:
    """Values with an interval are numbers too; a column with any word stays left-aligned."""
    out = format_table(["sex", "n"], [["F", "1,204  [1,198, 1,210]"], ["M", "98  [92, 104]"]])
    assert out.splitlines()[2:] == ["F    1,204  [1,198, 1,210]", "M            98  [92, 104]"]


def test_a_table_without_rows_is_its_header() -> None:
    """No rows: the header and its rule only."""
    assert format_table(["dataset", "cap"], []) == "dataset  cap\n-------  ---"
