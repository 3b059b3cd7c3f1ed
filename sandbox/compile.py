"""Regenerate SQL from a plan tree. No text from outside the sandbox ever reaches DuckDB.

Every identifier comes from the data owner's catalog and is double-quoted; every literal is rendered
from its Python value. The plan is type-checked first, so no comparison needs a runtime cast from a
string (DuckDB's cast errors quote data values), and arithmetic runs in DOUBLE, which cannot raise
(overflow gives inf, division by zero inf or NaN): no error depends on the data (THREATS.md 3).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from sandbox.errors import PlanRejectedError
from sandbox.protocol import (
    ARITHMETIC_OPS,
    COMPARISON_OPS,
    LOGICAL_OPS,
    AggregateKind,
    Between,
    Binary,
    Column,
    ColumnInfo,
    Expr,
    InList,
    IsNull,
    Literal,
    QueryPlan,
    Scalar,
    TableInfo,
    Unary,
)

MAX_DEPTH = 64
MAX_NODES = 4096
MAX_IN_VALUES = 10_000
MAX_STRING = 10_000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_KIND = {"int64": "num", "float64": "num", "string": "str", "bool": "bool"}


@dataclass(frozen=True, slots=True)
class CompiledPlan:
    """SQL for a plan and how to read its result.

    Attributes:
        sql: one SELECT over the truncated table.
        cells: every group-key combination in domain order (`((),)` when ungrouped).
        components: (aggregate_index, "count" | "sum") of each SELECT column after the group keys.
    """

    sql: str
    cells: tuple[tuple[Scalar, ...], ...]
    components: tuple[tuple[int, str], ...]


def quote_ident(name: str) -> str:
    """`name` as a DuckDB identifier: double-quoted, inner quotes doubled."""
    if "\x00" in name:
        raise PlanRejectedError("identifier contains NUL")
    return '"' + name.replace('"', '""') + '"'


def render_literal(value: Scalar) -> str:
    """A literal as SQL: ints and finite floats by repr, strings single-quoted, TRUE/FALSE, NULL."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise PlanRejectedError("integer literal outside int64")
        return repr(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise PlanRejectedError("float literal must be finite")
        return f"CAST({value!r} AS DOUBLE)"
    if isinstance(value, str):
        if "\x00" in value or len(value) > MAX_STRING:
            raise PlanRejectedError(f"string literal has NUL or exceeds {MAX_STRING} characters")
        return "'" + value.replace("'", "''") + "'"
    raise PlanRejectedError(f"unsupported literal type {type(value).__name__}")


def _lit_kind(value: Scalar) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "num"
    return "str"


class _Compiler:
    def __init__(self, table: TableInfo, unit: str) -> None:
        self.table = table
        self.unit = unit
        self.nodes = 0

    def column(self, name: str) -> ColumnInfo:
        col = self.table.column(name)
        if col is None:
            raise PlanRejectedError(f"unknown column {name!r}")
        if col.grade == "identifier" or name == self.unit:
            raise PlanRejectedError(f"column {name!r} is an identifier and cannot be used")
        return col

    def expr(self, e: Expr, depth: int = 0) -> tuple[str, str]:
        """SQL text and kind ('num', 'str', 'bool', 'null') of an expression."""
        self.nodes += 1
        if depth > MAX_DEPTH or self.nodes > MAX_NODES:
            raise PlanRejectedError(f"expression exceeds depth {MAX_DEPTH} or {MAX_NODES} nodes")
        match e:
            case Column(name):
                return quote_ident(self.column(name).name), _KIND[self.column(name).type]
            case Literal(value):
                return render_literal(value), _lit_kind(value)
            case Unary("-", operand):
                sql, kind = self.expr(operand, depth + 1)
                self._need(kind, "num", "-")
                return f"(-CAST({sql} AS DOUBLE))", "num"
            case Unary("NOT", operand):
                sql, kind = self.expr(operand, depth + 1)
                self._need(kind, "bool", "NOT")
                return f"(NOT {sql})", "bool"
            case Binary(op, left, right):
                lsql, lk = self.expr(left, depth + 1)
                rsql, rk = self.expr(right, depth + 1)
                if op in ARITHMETIC_OPS:
                    self._need(lk, "num", op)
                    self._need(rk, "num", op)
                    return f"(CAST({lsql} AS DOUBLE) {op} CAST({rsql} AS DOUBLE))", "num"
                if op in COMPARISON_OPS:
                    self._same(lk, rk, op)
                    return f"({lsql} {op} {rsql})", "bool"
                if op in LOGICAL_OPS:
                    self._need(lk, "bool", op)
                    self._need(rk, "bool", op)
                    return f"({lsql} {op} {rsql})", "bool"
            case IsNull(operand, negated):
                sql, _ = self.expr(operand, depth + 1)
                return f"({sql} IS {'NOT ' if negated else ''}NULL)", "bool"
            case InList(operand, values, negated):
                sql, kind = self.expr(operand, depth + 1)
                if not values or len(values) > MAX_IN_VALUES:
                    raise PlanRejectedError(f"IN needs 1 to {MAX_IN_VALUES} values")
                self.nodes += len(values)
                items = []
                for v in values:
                    self._same(kind, _lit_kind(v.value), "IN")
                    items.append(render_literal(v.value))
                return f"({sql} {'NOT ' if negated else ''}IN ({', '.join(items)}))", "bool"
            case Between(operand, low, high, negated):
                sql, kind = self.expr(operand, depth + 1)
                lo, lok = self.expr(low, depth + 1)
                hi, hik = self.expr(high, depth + 1)
                self._same(kind, lok, "BETWEEN")
                self._same(kind, hik, "BETWEEN")
                return f"({sql} {'NOT ' if negated else ''}BETWEEN {lo} AND {hi})", "bool"
        raise PlanRejectedError(f"unsupported expression {type(e).__name__}")

    @staticmethod
    def _need(kind: str, want: str, op: str) -> None:
        if kind not in (want, "null"):
            raise PlanRejectedError(f"operator {op} needs {want} operands, got {kind}")

    @staticmethod
    def _same(a: str, b: str, op: str) -> None:
        if a != b and "null" not in (a, b):
            raise PlanRejectedError(f"operator {op} compares {a} with {b}")


def _clamped(col: ColumnInfo) -> tuple[str, bool]:
    """The clamped value of a bounded numeric column, and whether it is summed as an integer."""
    if col.lower is None or col.upper is None or col.type not in ("int64", "float64"):
        raise PlanRejectedError(f"column {col.name!r} has no declared numeric bounds")
    q = quote_ident(col.name)
    if col.type == "int64" and float(col.lower).is_integer() and float(col.upper).is_integer():
        lo, hi = int(col.lower), int(col.upper)
        return f"least(greatest({q}, CAST({lo} AS BIGINT)), CAST({hi} AS BIGINT))", True
    lo_s, hi_s = render_literal(float(col.lower)), render_literal(float(col.upper))
    v = f"CAST({q} AS DOUBLE)"
    # NaN would sort above every number (least(NaN, U) = U); treat it as missing instead.
    return f"CASE WHEN isnan({v}) THEN NULL ELSE least(greatest({v}, {lo_s}), {hi_s}) END", False


def compile_plan(
    plan: QueryPlan, table: TableInfo, *, sql_table: str, unit: str, max_cells: int
) -> CompiledPlan:
    """Type-check `plan` against the catalog `table` and render it as one SELECT.

    Args:
        plan: the plan (dataset/table already resolved by the caller).
        table: the catalog's description of the table.
        sql_table: the DuckDB table holding the truncated rows.
        unit: the privacy-unit column (never usable in a plan).
        max_cells: most group-key combinations a plan may ask for.

    Raises:
        PlanRejectedError: unknown or identifier column, type error, key without domain, too many
            cells or nodes. The message depends only on the plan and the catalog.
    """
    c = _Compiler(table, unit)
    keys: list[str] = []
    domains: list[tuple[Scalar, ...]] = []
    where: list[str] = []
    n_cells = 1
    if len(set(plan.group_by)) != len(plan.group_by):
        raise PlanRejectedError("a group key appears twice")
    for g in plan.group_by:
        col = c.column(g)
        if col.domain is None:
            raise PlanRejectedError(f"group key {g!r} has no declared domain")
        n_cells *= len(col.domain)
        if n_cells > max_cells:
            raise PlanRejectedError(f"the group keys have more than {max_cells} combinations")
        q = quote_ident(g)
        keys.append(q)
        domains.append(col.domain)
        where.append(f"({q} IN ({', '.join(render_literal(v) for v in col.domain)}))")
    if plan.where is not None:
        sql, kind = c.expr(plan.where)
        c._need(kind, "bool", "WHERE")
        where.append(sql)
    select = list(keys)
    comps: list[tuple[int, str]] = []
    for i, agg in enumerate(plan.aggregates):
        if agg.kind is AggregateKind.COUNT:
            select.append("count(*)")
            comps.append((i, "count"))
            continue
        assert agg.column is not None
        col = c.column(agg.column)
        if agg.kind is AggregateKind.COUNT_COLUMN:
            select.append(f"count({quote_ident(col.name)})")
            comps.append((i, "count"))
            continue
        value, integer = _clamped(col)
        total = "sum" if integer else "fsum"
        select.append(f"coalesce({total}({value}), 0)")
        comps.append((i, "sum"))
        if agg.kind is AggregateKind.AVG:
            select.append(f"count({value})")
            comps.append((i, "count"))
    sql = f"SELECT {', '.join(select)} FROM {quote_ident(sql_table)}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if keys:
        sql += " GROUP BY " + ", ".join(keys)
    cells = tuple(itertools.product(*domains)) if domains else ((),)
    return CompiledPlan(sql=sql, cells=cells, components=tuple(comps))
