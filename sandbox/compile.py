"""Regenerate SQL from a plan tree. No text from outside the sandbox ever reaches DuckDB.

Every identifier comes from the data owner's catalog and is double-quoted; every literal is rendered
from its Python value. The plan is type-checked first, so no comparison needs a runtime cast from a
string (DuckDB's cast errors quote data values), and arithmetic runs in DOUBLE, which cannot raise
(overflow gives inf, division by zero inf or NaN): no error depends on the data (THREATS.md 3).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
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
    DatasetInfo,
    Expr,
    InList,
    InUnits,
    IsNull,
    Literal,
    PublicJoin,
    QueryPlan,
    Scalar,
    Source,
    TableInfo,
    TableSource,
    Unary,
    UnitAggregate,
    UnitJoin,
    UnitOutput,
)
from sandbox.relation import Relation, key, source_relation

MAX_DEPTH = 64
MAX_NODES = 4096
MAX_IN_VALUES = 10_000
MAX_STRING = 10_000
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_KIND = {"int64": "num", "float64": "num", "string": "str", "bool": "bool"}
_JOIN = {"inner": "INNER JOIN", "left": "LEFT JOIN"}


@dataclass(frozen=True, slots=True)
class CompiledPlan:
    """SQL for a plan and how to read its result.

    Attributes:
        sql: one SELECT over the truncated table.
        cells: every group-key combination in domain order (`((),)` when ungrouped; `()` under
            partition selection, where the keys come from the data and the threshold mechanism).
        components: (aggregate_index, "count" | "sum" | "select") of each SELECT column after the
            group keys; "select" (index -1) is the per-key row count partition selection uses.
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
    """Compiles expressions over one relation (a single table, or a FROM tree's columns)."""

    def __init__(self, rel: Relation, ctx: _Context) -> None:
        self.rel = rel
        self.ctx = ctx

    @property
    def nodes(self) -> int:
        return self.ctx.nodes

    def column(self, name: str) -> ColumnInfo:
        """The catalog column behind a relation key (never an identifier or the privacy unit)."""
        col = self.rel.column(name)
        if col is None:
            raise PlanRejectedError(f"unknown column {name!r}")
        if col.grade == "identifier" or name in self.rel.units:
            raise PlanRejectedError(f"column {name!r} is an identifier and cannot be used")
        return col

    def ref(self, name: str) -> str:
        """SQL text of the relation key `name` ("col" or "alias"."col")."""
        if "." in name and name not in self.rel.columns:
            raise PlanRejectedError(f"unknown column {name!r}")
        if self.ctx.qualified:
            alias, _, col = name.partition(".")
            return f"{quote_ident(alias)}.{quote_ident(col)}"
        return quote_ident(name)

    def unit_ref(self) -> str:
        """SQL text of the relation's primary privacy-unit column."""
        return self.ref(self.rel.unit)

    def expr(self, e: Expr, depth: int = 0) -> tuple[str, str]:
        """SQL text and kind ('num', 'str', 'bool', 'null') of an expression."""
        self.ctx.nodes += 1
        if depth > MAX_DEPTH or self.ctx.nodes > MAX_NODES:
            raise PlanRejectedError(f"expression exceeds depth {MAX_DEPTH} or {MAX_NODES} nodes")
        match e:
            case Column():
                if (e.table is None) == self.ctx.qualified:
                    raise PlanRejectedError("column qualification does not match the plan")
                k = key(e)
                return self.ref(k), _KIND[self.column(k).type]
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
                self.ctx.nodes += len(values)
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
            case InUnits(source, where, negated):
                # Semi-join on the privacy unit: the inner query is generated here, never by users.
                # `IS NOT NULL` keeps NOT IN from turning NULL for every row when the inner side
                # holds a NULL unit (which would let one "unit" flip every row's filter).
                inner = self.ctx.sub(source)
                sub = _Compiler(inner, replace_ctx(self.ctx, qualified=True))
                frm = sub.source(source)
                unit = sub.unit_ref()
                cond = f"({unit} IS NOT NULL)"
                if where is not None:
                    wsql, wk = sub.expr(where, depth + 1)
                    self._need(wk, "bool", "WHERE")
                    cond += f" AND {wsql}"
                self.ctx.nodes = sub.ctx.nodes
                op = "NOT IN" if negated else "IN"
                return f"({self.unit_ref()} {op} (SELECT {unit} FROM {frm} WHERE {cond}))", "bool"
        raise PlanRejectedError(f"unsupported expression {type(e).__name__}")

    def source(self, s: Source) -> str:
        """SQL text of a FROM tree (every name quoted, every join on the unit or a unique key)."""
        match s:
            case TableSource(table, alias):
                return f"{quote_ident(self.ctx.sql_table(table))} AS {quote_ident(alias)}"
            case UnitJoin(left, right, kind):
                lrel = self.ctx.sub(left)
                lsql = _Compiler(lrel, self.ctx).source(left)
                lunit = _Compiler(lrel, self.ctx).unit_ref()
                runit = f"{quote_ident(right.alias)}.{quote_ident(self.ctx.unit)}"
                return (
                    f"{lsql} {_JOIN[kind]} {self.source(right)} ON ({lunit} = {runit})"
                )
            case PublicJoin(left, right, left_key, right_key, kind):
                lrel = self.ctx.sub(left)
                lc = _Compiler(lrel, self.ctx)
                lsql = lc.source(left)
                ksql, kk = lc.expr(left_key)
                rcol = self.ctx.dataset.table(right.table)
                assert rcol is not None
                rk = rcol.column(right_key)
                assert rk is not None
                self._same(kk, _KIND[rk.type], "JOIN")
                rref = f"{quote_ident(right.alias)}.{quote_ident(right_key)}"
                return f"{lsql} {_JOIN[kind]} {self.source(right)} ON ({ksql} = {rref})"
            case UnitAggregate(inp, where, outputs, alias):
                inner = self.ctx.sub(inp)
                ic = _Compiler(inner, self.ctx)
                frm = ic.source(inp)
                unit = ic.unit_ref()
                items = [f"{unit} AS {quote_ident(self.ctx.unit)}"]
                for o in outputs:
                    items.append(f"{ic.unit_output(o)} AS {quote_ident(o.name)}")
                sql = f"(SELECT {', '.join(items)} FROM {frm}"
                if where is not None:
                    wsql, wk = ic.expr(where)
                    self._need(wk, "bool", "WHERE")
                    sql += f" WHERE {wsql}"
                return sql + f" GROUP BY {unit}) AS {quote_ident(alias)}"
        raise PlanRejectedError("unsupported source")  # pragma: no cover

    def unit_output(self, o: UnitOutput) -> str:
        """One per-unit aggregate over clamped values (so the derived bounds hold)."""
        if o.kind == "count_star":
            return "count(*)"
        assert o.column is not None
        k = key(o.column)
        col = self.column(k)
        if o.kind == "count":
            return f"count({self.ref(k)})"
        value, integer = _clamped(col, self.ref(k))
        if o.kind == "sum":
            return f"{'sum' if integer else 'fsum'}({value})"
        if o.kind == "avg":
            return f"avg(CAST({value} AS DOUBLE))"
        return f"{o.kind}({value})"  # min, max

    @staticmethod
    def _need(kind: str, want: str, op: str) -> None:
        if kind not in (want, "null"):
            raise PlanRejectedError(f"operator {op} needs {want} operands, got {kind}")

    @staticmethod
    def _same(a: str, b: str, op: str) -> None:
        if a != b and "null" not in (a, b):
            raise PlanRejectedError(f"operator {op} compares {a} with {b}")


def _clamped(col: ColumnInfo, q: str) -> tuple[str, bool]:
    """The clamped value of a bounded numeric column (SQL text `q`), and whether it is an integer."""
    if col.lower is None or col.upper is None or col.type not in ("int64", "float64"):
        raise PlanRejectedError(f"column {col.name!r} has no declared numeric bounds")
    if col.type == "int64" and float(col.lower).is_integer() and float(col.upper).is_integer():
        lo, hi = int(col.lower), int(col.upper)
        return f"least(greatest({q}, CAST({lo} AS BIGINT)), CAST({hi} AS BIGINT))", True
    lo_s, hi_s = render_literal(float(col.lower)), render_literal(float(col.upper))
    v = f"CAST({q} AS DOUBLE)"
    # NaN would sort above every number (least(NaN, U) = U); treat it as missing instead.
    return f"CASE WHEN isnan({v}) THEN NULL ELSE least(greatest({v}, {lo_s}), {hi_s}) END", False


@dataclass(slots=True)
class _Context:
    """What every compiler of one plan shares: catalog, table names, node budget."""

    dataset: DatasetInfo
    sql_tables: Mapping[str, str]
    unit: str
    qualified: bool
    nodes: int = 0

    def sql_table(self, table: str) -> str:
        if table not in self.sql_tables:
            raise PlanRejectedError(f"unknown table {table!r}")
        return self.sql_tables[table]

    def sub(self, s: Source) -> Relation:
        return source_relation(s, self.dataset)


def replace_ctx(ctx: _Context, *, qualified: bool) -> _Context:
    """The same context (shared node budget) with another qualification mode, for subqueries."""
    if ctx.qualified == qualified:
        return ctx
    out = _Context(ctx.dataset, ctx.sql_tables, ctx.unit, qualified, ctx.nodes)
    return out


def compile_plan(
    plan: QueryPlan,
    table: TableInfo,
    *,
    sql_table: str,
    unit: str,
    max_cells: int,
    dataset: DatasetInfo | None = None,
    sql_tables: Mapping[str, str] | None = None,
) -> CompiledPlan:
    """Type-check `plan` against the catalog and render it as one SELECT.

    Args:
        plan: the plan (dataset/table already resolved by the caller).
        table: the catalog's description of the plan's table.
        sql_table: the DuckDB table holding its truncated rows.
        unit: the privacy-unit column (never usable in a plan's expressions).
        max_cells: most group-key combinations a plan may ask for.
        dataset: the catalog's dataset (needed for sources and semi-joins).
        sql_tables: DuckDB table of every catalog table of the dataset (for sources and semi-joins).

    Raises:
        PlanRejectedError: unknown or identifier column, type error, key without domain, too many
            cells or nodes. The message depends only on the plan and the catalog.
    """
    ds = dataset or DatasetInfo("", unit, (table,), "")
    tables = dict(sql_tables or {}) | {table.name: sql_table}
    ctx = _Context(ds, tables, unit, qualified=plan.source is not None)
    if plan.source is None:
        if table.public:
            raise PlanRejectedError(f"table {table.name!r} is public; join it to a private table")
        rel = Relation(
            k=table.max_rows_per_unit,
            columns={col.name: col for col in table.columns},
            units=frozenset({unit}),
            unit=unit,
            aliases=frozenset({table.name}),
            tables=(table.name,),
        )
    else:
        rel = source_relation(plan.source, ds)
    c = _Compiler(rel, ctx)
    keys: list[str] = []
    domains: list[tuple[Scalar, ...]] = []
    where: list[str] = []
    n_cells = 1
    if len(set(plan.group_by)) != len(plan.group_by):
        raise PlanRejectedError("a group key appears twice")
    for g in plan.group_by:
        col = c.column(g)
        q = c.ref(g)
        keys.append(q)
        if plan.partition_selection:
            continue  # keys chosen by DP partition selection in the engine
        if col.domain is None:
            raise PlanRejectedError(f"group key {g!r} has no declared domain")
        n_cells *= len(col.domain)
        if n_cells > max_cells:
            raise PlanRejectedError(f"the group keys have more than {max_cells} combinations")
        domains.append(col.domain)
        where.append(f"({q} IN ({', '.join(render_literal(v) for v in col.domain)}))")
    if plan.where is not None:
        sql, kind = c.expr(plan.where)
        c._need(kind, "bool", "WHERE")
        where.append(sql)
    select = list(keys)
    comps: list[tuple[int, str]] = []
    if plan.partition_selection:
        select.append("count(*)")
        comps.append((-1, "select"))
    for i, agg in enumerate(plan.aggregates):
        if agg.kind is AggregateKind.COUNT:
            select.append("count(*)")
            comps.append((i, "count"))
            continue
        assert agg.column is not None
        col = c.column(agg.column)
        ref = c.ref(agg.column)
        if agg.kind is AggregateKind.COUNT_COLUMN:
            select.append(f"count({ref})")
            comps.append((i, "count"))
            continue
        value, integer = _clamped(col, ref)
        total = "sum" if integer else "fsum"
        select.append(f"coalesce({total}({value}), 0)")
        comps.append((i, "sum"))
        if agg.kind is AggregateKind.AVG:
            select.append(f"count({value})")
            comps.append((i, "count"))
    frm = quote_ident(sql_table) if plan.source is None else c.source(plan.source)
    sql = f"SELECT {', '.join(select)} FROM {frm}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if keys:
        sql += " GROUP BY " + ", ".join(keys)
    if plan.partition_selection:
        cells: tuple[tuple[Scalar, ...], ...] = ()
    else:
        cells = tuple(itertools.product(*domains)) if domains else ((),)
    return CompiledPlan(sql=sql, cells=cells, components=tuple(comps))
