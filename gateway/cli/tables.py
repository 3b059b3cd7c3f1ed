"""The CLI's plain text tables: one printer for every command that shows rows."""

from __future__ import annotations

import re

__all__ = ["format_table"]

_NUMBER = re.compile(r"^[-+]?[\d,]*\.?\d+(e[-+]?\d+)?%?$|^[-+]?[\d,]*\.?\d+ *\[.*\]$|^-$", re.IGNORECASE)


def _numeric(cells: list[str]) -> bool:
    filled = [c for c in cells if c and c != "-"]
    return bool(filled) and all(_NUMBER.match(c) for c in filled)


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain text table: the header, a rule, then the rows, each column as wide as its widest cell; a column
    of numbers is right-aligned (header included), every other column left-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    right = [_numeric([r[i] for r in rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])
