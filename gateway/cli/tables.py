"""The CLI's plain text tables: one printer for every command that shows rows."""

from __future__ import annotations

__all__ = ["format_table"]


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """A plain text table: the header, a rule, then the rows, each column as wide as its widest cell."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)
