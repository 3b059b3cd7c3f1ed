"""Interval arithmetic over plan expressions: the bounds of an aggregated expression, from the catalog.

Pure and shared: the gateway calls `expression_bounds` to build and price a plan; the sandbox calls the
same function with its own catalog and never trusts bounds from the plan. The compiler always clamps
the aggregated value to the derived [lower, upper] in SQL (and clamps every bounded column it reads
inside an aggregate to its declared bounds), so the sensitivity used for pricing holds exactly even if a
rule here were loose; the rules only decide how much clamping changes the answer.

Rules (`Interval(lo, hi, integer)`; infinite ends mean "unbounded"):

* column: its declared [lower, upper] (numeric, rounded outward to floats), [0, 1] (bool), no interval
  (string), looked up by its relation key (`sandbox.plans.relation.key`) so joined tables and the derived
  columns of per-unit subqueries (whose bounds `sandbox.plans.relation.derived_column` derives) have bounds too;
* literal: [v, v]; booleans are 0/1 wherever they are aggregated;
* `+ - *`: the usual interval arithmetic; `/` only by a non-zero literal; `%` by a literal c gives a
  value of the dividend's sign with |r| < |c|;
* unary minus; comparisons, AND/OR/NOT, IN, BETWEEN, IS NULL: [0, 1];
* CASE: the hull of its THEN/ELSE values (a missing ELSE is NULL, which aggregates skip);
* TRY_CAST: to int64 [floor(lo), ceil(hi)]; to float64 unchanged; from string unbounded;
* functions: the rule declared in `sandbox.plans.functions` (CLAMP(x, lo, hi) gives [lo, hi]).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Protocol

from sandbox.plans.functions import UNBOUNDED, Interval, lookup
from sandbox.protocol.catalog import ColumnInfo
from sandbox.protocol.plan import (
    ARITHMETIC_OPS,
    Between,
    Binary,
    Case,
    Cast,
    Column,
    Expr,
    Func,
    InList,
    InUnits,
    IsNull,
    Literal,
    Unary,
)


class Columns(Protocol):
    """Where column descriptions come from: a `sandbox.plans.relation.Relation` (keys `name` or
    `alias.name`) or, for a plan without a source, a `TableInfo` (keys are plain names)."""

    def column(self, name: str, /) -> ColumnInfo | None: ...


def column_key(col: Column) -> str:
    """The relation key of a column (`sandbox.plans.relation.key`)."""
    return col.name if col.table is None else f"{col.table}.{col.name}"

BOOL = Interval(0.0, 1.0, True)
MAX_BOUND = 2.0**53  # beyond this the exact integer path and the noise calibration stop being exact


def float_up(x: int | float | Fraction) -> float:
    """The smallest float at or above the exact value `x` (a float product or an int's conversion to
    float may round down)."""
    f = float(x)
    return math.nextafter(f, math.inf) if Fraction(f) < x else f


def float_down(x: int | float | Fraction) -> float:
    """The largest float at or below the exact value `x`."""
    f = float(x)
    return math.nextafter(f, -math.inf) if Fraction(f) > x else f


def _mul(a: float, b: float) -> float:
    if a == 0 or b == 0:
        return 0.0
    return a * b


def _hull(items: list[Interval | None]) -> Interval | None:
    present = [i for i in items if i is not None]
    if not present:
        return None
    return Interval(
        min(i.lo for i in present), max(i.hi for i in present), all(i.integer for i in present)
    )


def _literal_number(e: Expr) -> float | None:
    if isinstance(e, Literal) and isinstance(e.value, int | float) and not isinstance(e.value, bool):
        return float(e.value)
    if isinstance(e, Unary) and e.op == "-":
        v = _literal_number(e.operand)
        return None if v is None else -v
    return None


def literal_value(e: Expr) -> object:
    """The Python value of a literal argument (also `-5`), or None."""
    if isinstance(e, Literal):
        return e.value
    if isinstance(e, Unary) and e.op == "-":
        v = literal_value(e.operand)
        if isinstance(v, int | float) and not isinstance(v, bool):
            return -v
    return None


def interval(e: Expr, table: Columns) -> Interval | None:
    """The interval of values `e` can take inside an aggregate, or None if it is not numeric.

    NULL literals and string expressions have no interval. Column reads are the clamped ones the
    compiler renders inside aggregates.
    """
    match e:
        case Column():
            col = table.column(column_key(e))
            if col is None:
                return None
            if col.type == "bool":
                return BOOL
            if col.type not in ("int64", "float64"):
                return None
            integer = col.type == "int64"
            if col.lower is None or col.upper is None:
                return Interval(-math.inf, math.inf, integer)
            # Rounded outward: a derived bound (K * U of a per-unit SUM) may be an int above 2^53.
            return Interval(float_down(col.lower), float_up(col.upper), integer)
        case Literal(value):
            if isinstance(value, bool):
                return Interval(float(value), float(value), True)
            if isinstance(value, int | float):
                return Interval(float(value), float(value), isinstance(value, int))
            return None
        case Unary("-", operand):
            x = interval(operand, table)
            return None if x is None else Interval(-x.hi, -x.lo, x.integer)
        case Unary():
            return BOOL
        case Binary(op, left, right) if op in ARITHMETIC_OPS:
            return _arith(op, left, right, table)
        case Binary() | IsNull() | InList() | Between() | InUnits():
            return BOOL
        case Case(whens, else_):
            values = [interval(v, table) for _, v in whens]
            if else_ is not None:
                values.append(interval(else_, table))
            return _hull(values)
        case Cast(operand, to):
            return _cast(operand, to, table)
        case Func(name, args):
            spec = lookup(name)
            if spec is None:
                return None
            if spec.result == "bool":
                return BOOL
            ivs = [interval(a, table) for a in args]
            lits = [literal_value(a) for a in args]
            if spec.bound is None:
                return None
            return spec.bound(ivs, lits)
    return None  # type: ignore[unreachable]  # defensive: a node type added to Expr later


def _arith(op: str, left: Expr, right: Expr, table: Columns) -> Interval | None:
    a, b = interval(left, table), interval(right, table)
    if a is None or b is None:
        return None
    integer = a.integer and b.integer
    if op == "+":
        return Interval(a.lo + b.lo, a.hi + b.hi, integer)
    if op == "-":
        return Interval(a.lo - b.hi, a.hi - b.lo, integer)
    if op == "*":
        products = [_mul(x, y) for x in (a.lo, a.hi) for y in (b.lo, b.hi)]
        return Interval(min(products), max(products), integer)
    c = _literal_number(right)
    if c is None or c == 0:
        return UNBOUNDED  # the analyzer refuses such divisions; stay safe anyway
    if op == "/":
        q = [a.lo / c, a.hi / c]
        return Interval(min(q), max(q), False)
    # `%` (fmod semantics: the result has the dividend's sign and |r| < |c|).
    m = abs(c)
    lo = 0.0 if a.lo >= 0 else max(a.lo, -m)
    hi = 0.0 if a.hi <= 0 else min(a.hi, m)
    return Interval(lo, hi, integer)


def _cast(operand: Expr, to: str, table: Columns) -> Interval | None:
    if to == "bool":
        return BOOL
    if to == "string":
        return None
    x = interval(operand, table)
    if x is None:  # from string (or NULL): any number can come out
        return Interval(-math.inf, math.inf, to == "int64")
    if to == "int64":
        lo = math.floor(x.lo) if math.isfinite(x.lo) else x.lo
        hi = math.ceil(x.hi) if math.isfinite(x.hi) else x.hi
        return Interval(lo, hi, True)
    return x


def expression_bounds(e: Expr, table: Columns) -> tuple[float, float, bool] | None:
    """(lower, upper, integer) for an aggregated expression, or None if it is not finitely bounded.

    `integer` is True when every value is an integer and the bounds are integral, so sums can be
    computed exactly on int64 and noised with the discrete Laplace.
    """
    iv = interval(e, table)
    if iv is None or not iv.bounded or max(abs(iv.lo), abs(iv.hi)) > MAX_BOUND:
        return None
    lo, hi = float(iv.lo), float(iv.hi)
    if lo > hi:  # empty (e.g. CLAMP of a disjoint range): a single point is still a valid bound
        hi = lo
    integer = iv.integer and lo.is_integer() and hi.is_integer()
    return (lo + 0.0, hi + 0.0, integer)
