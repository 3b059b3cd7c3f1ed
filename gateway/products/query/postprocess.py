"""Post-processing of released values: HAVING, ORDER BY, LIMIT/OFFSET, applied in the gateway.

These clauses never reach the sandbox. They operate only on what the sandbox released (noisy values and
public group keys), so by the post-processing property of differential privacy they cost nothing extra:
the charge is that of the releases. An aggregate used in HAVING or ORDER BY but not selected is still a
released (and charged) aggregate of the plan, only hidden from the answer.

Expressions here are plan expressions whose `Column` names are slots: `k<i>` for group key i and
`a<i>` for aggregate i (its noisy value). SQL three-valued logic is followed: a NULL comparison
filters the row out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from msgspec.structs import replace

from sandbox.protocol.messages import (
    Between,
    Binary,
    Column,
    ExecuteResult,
    Expr,
    InList,
    IsNull,
    Literal,
    ReleaseRow,
    Unary,
)

__all__ = ["OrderItem", "PostProcess", "apply", "slot_key"]


@dataclass(frozen=True, slots=True)
class OrderItem:
    """One ORDER BY item over a slot."""

    slot: str
    descending: bool = False
    nulls_first: bool | None = None  # None: SQL default (NULLS LAST for ASC, FIRST for DESC in DuckDB: LAST)


@dataclass(frozen=True, slots=True)
class PostProcess:
    """What the gateway applies to the released rows."""

    having: Expr | None = None
    order_by: tuple[OrderItem, ...] = ()
    limit: int | None = None
    offset: int = 0

    @property
    def empty(self) -> bool:
        """True when nothing is to be done."""
        return self.having is None and not self.order_by and self.limit is None and not self.offset


def slot_key(i: int) -> str:
    """Slot name of group key i."""
    return f"k{i}"


def _slot(row: ReleaseRow, name: str) -> Any:
    index = int(name[1:])
    if name[0] == "k":
        return row.keys[index]
    return row.values[index].value


def _eval(e: Expr, row: ReleaseRow) -> Any:
    match e:
        case Column(name):
            return _slot(row, name)
        case Literal(value):
            return value
        case Unary("-", operand):
            v = _eval(operand, row)
            return None if v is None else -v
        case Unary("NOT", operand):
            v = _eval(operand, row)
            return None if v is None else not v
        case Binary("AND", left, right):
            a, b = _eval(left, row), _eval(right, row)
            if a is False or b is False:
                return False
            return None if a is None or b is None else True
        case Binary("OR", left, right):
            a, b = _eval(left, row), _eval(right, row)
            if a is True or b is True:
                return True
            return None if a is None or b is None else False
        case Binary(op, left, right):
            a, b = _eval(left, row), _eval(right, row)
            if a is None or b is None:
                return None
            return _binary(op, a, b)
        case IsNull(operand, negated):
            return (_eval(operand, row) is None) != negated
        case InList(operand, values, negated):
            v = _eval(operand, row)
            if v is None:
                return None
            return (v in [x.value for x in values]) != negated
        case Between(operand, low, high, negated):
            v, lo, hi = _eval(operand, row), _eval(low, row), _eval(high, row)
            if v is None or lo is None or hi is None:
                return None
            return (lo <= v <= hi) != negated
    raise ValueError(f"unsupported post-processing expression {type(e).__name__}")


def _binary(op: str, a: Any, b: Any) -> Any:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return a / b if b else None
    if op == "%":
        return math.fmod(a, b) if b else None
    return {
        "=": a == b,
        "<>": a != b,
        "<": a < b,
        "<=": a <= b,
        ">": a > b,
        ">=": a >= b,
    }[op]


def apply(post: PostProcess, result: ExecuteResult) -> ExecuteResult:
    """Filter, sort and cut the released rows; never touches data or budget."""
    if post.empty:
        return result
    rows = list(result.rows)
    if post.having is not None:
        having = post.having
        rows = [r for r in rows if _eval(having, r) is True]
    for item in reversed(post.order_by):  # stable sorts, last key first
        nulls_first = item.nulls_first if item.nulls_first is not None else False
        present = [r for r in rows if _slot(r, item.slot) is not None]
        missing = [r for r in rows if _slot(r, item.slot) is None]
        slot = item.slot
        present.sort(key=lambda r: _slot(r, slot), reverse=item.descending)
        rows = missing + present if nulls_first else present + missing
    start = post.offset
    end = None if post.limit is None else start + post.limit
    return replace(result, rows=tuple(rows[start:end]))
