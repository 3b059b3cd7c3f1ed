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

from sandbox import bounds
from sandbox.errors import PlanRejectedError
from sandbox.functions import lookup, render_clamp
from sandbox.protocol import (
    ARITHMETIC_OPS,
    COMPARISON_OPS,
    LOGICAL_OPS,
    VARIANCE_KINDS,
    Aggregate,
    AggregateKind,
    Between,
    Binary,
    Case,
    Cast,
    Column,
    ColumnInfo,
    Expr,
    Func,
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
MAX_SQL_CHARS = 4_000_000  # rendered SQL (CASE guards repeat sub-expressions); data-independent
MAX_CANDIDATES = 1024  # quantile candidate grid
_CAST_SQL = {"int64": "BIGINT", "float64": "DOUBLE", "string": "VARCHAR", "bool": "BOOLEAN"}
_CAST_KIND = {"int64": "num", "float64": "num", "string": "str", "bool": "bool"}
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
    quantiles: tuple[QuantileQuery, ...] = ()


@dataclass(frozen=True, slots=True)
class QuantileQuery:
    """Per-cell counts of a quantile aggregate's value snapped to the candidate grid.

    `sql` returns rows (group keys..., candidate index, count); the engine rebuilds OpenDP's quantile
    scores from these counts (`sandbox.mechanisms.quantile_scores`).
    """

    aggregate_index: int
    sql: str
    candidates: tuple[float, ...]


def quantile_candidates(lower: float, upper: float, integer: bool) -> tuple[float, ...]:
    """The candidate grid of a quantile over [lower, upper]: every integer when the expression is
    integer and the range holds at most 1024 of them, otherwise 1024 evenly spaced points (L and U
    included). Shared by compiler and pricing, so both see the same grid."""
    if upper <= lower:
        return (float(lower),)
    if integer and upper - lower + 1 <= MAX_CANDIDATES:
        return tuple(float(v) for v in range(int(lower), int(upper) + 1))
    m = MAX_CANDIDATES
    step = (upper - lower) / (m - 1)
    return tuple([lower + j * step for j in range(m - 1)] + [upper])


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

    def expr(self, e: Expr, depth: int = 0, clamp: bool = False) -> tuple[str, str]:
        """SQL text and kind ('num', 'str', 'bool', 'null') of an expression.

        With `clamp`, numeric columns are read clamped to their declared bounds (NaN read as NULL),
        as inside aggregates, so that `sandbox.bounds` describes the values exactly.
        """
        self.nodes += 1
        if depth > MAX_DEPTH or self.nodes > MAX_NODES:
            raise PlanRejectedError(f"expression exceeds depth {MAX_DEPTH} or {MAX_NODES} nodes")
        d = depth + 1
        match e:
            case Column(name):
                col = self.column(name)
                q = quote_ident(col.name)
                kind = _KIND[col.type]
                if clamp and kind == "num":
                    if col.lower is not None and col.upper is not None:
                        lo, hi = render_literal(float(col.lower)), render_literal(float(col.upper))
                        return render_clamp(q, lo, hi), kind
                    return f"(CASE WHEN NOT isnan(CAST({q} AS DOUBLE)) THEN CAST({q} AS DOUBLE) END)", kind
                return q, kind
            case Literal(value):
                return render_literal(value), _lit_kind(value)
            case Unary("-", operand):
                sql, kind = self.expr(operand, d, clamp)
                self._need(kind, "num", "-")
                return f"(-CAST({sql} AS DOUBLE))", "num"
            case Unary("NOT", operand):
                sql, kind = self.expr(operand, d, clamp)
                self._need(kind, "bool", "NOT")
                return f"(NOT {sql})", "bool"
            case Binary(op, left, right):
                lsql, lk = self.expr(left, d, clamp)
                rsql, rk = self.expr(right, d, clamp)
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
                sql, _ = self.expr(operand, d, clamp)
                return f"({sql} IS {'NOT ' if negated else ''}NULL)", "bool"
            case InList(operand, values, negated):
                sql, kind = self.expr(operand, d, clamp)
                if not values or len(values) > MAX_IN_VALUES:
                    raise PlanRejectedError(f"IN needs 1 to {MAX_IN_VALUES} values")
                self.nodes += len(values)
                items = []
                for v in values:
                    self._same(kind, _lit_kind(v.value), "IN")
                    items.append(render_literal(v.value))
                return f"({sql} {'NOT ' if negated else ''}IN ({', '.join(items)}))", "bool"
            case Between(operand, low, high, negated):
                sql, kind = self.expr(operand, d, clamp)
                lo, lok = self.expr(low, d, clamp)
                hi, hik = self.expr(high, d, clamp)
                self._same(kind, lok, "BETWEEN")
                self._same(kind, hik, "BETWEEN")
                return f"({sql} {'NOT ' if negated else ''}BETWEEN {lo} AND {hi})", "bool"
            case Case(whens, else_):
                parts: list[str] = []
                branches: list[tuple[str, str]] = []
                for cond, then in whens:
                    csql, ck = self.expr(cond, d, clamp)
                    self._need(ck, "bool", "CASE WHEN")
                    branches.append(self.expr(then, d, clamp))
                    parts.append(csql)
                if else_ is not None:
                    branches.append(self.expr(else_, d, clamp))
                kind = self._common([k for _, k in branches], "CASE")
                rendered = [f"CAST({v} AS DOUBLE)" if kind == "num" else v for v, _ in branches]
                body = " ".join(f"WHEN {c} THEN {v}" for c, v in zip(parts, rendered, strict=False))
                tail = f" ELSE {rendered[-1]}" if else_ is not None else ""
                return f"(CASE {body}{tail} END)", kind
            case Cast(operand, to):
                sql, _ = self.expr(operand, d, clamp)
                if to not in _CAST_SQL:
                    raise PlanRejectedError("unknown cast target")
                # Always TRY_CAST: a value that does not convert becomes NULL instead of an error
                # that would quote it.
                return f"TRY_CAST({sql} AS {_CAST_SQL[to]})", _CAST_KIND[to]
            case Func(name, args):
                return self._func(name, args, d, clamp)
        raise PlanRejectedError(f"unsupported expression {type(e).__name__}")

    def _func(self, name: str, args: tuple[Expr, ...], d: int, clamp: bool) -> tuple[str, str]:
        spec = lookup(name)
        if spec is None or spec.name != name:
            raise PlanRejectedError(f"function {name!r} is not allowlisted")
        n = len(args)
        if n < spec.min_args or (spec.max_args is not None and n > spec.max_args):
            raise PlanRejectedError(f"wrong number of arguments for {name}")
        literals = [bounds.literal_value(a) for a in args]
        for i in spec.literal_args:
            if i < n and not (isinstance(args[i], Literal | Unary) and literals[i] is not None):
                raise PlanRejectedError(f"argument {i + 1} of {name} must be a literal")
        if spec.check_literals is not None:
            problem = spec.check_literals(literals)
            if problem:
                raise PlanRejectedError(problem)
        rendered: list[str] = []
        kinds: list[str] = []
        for i, a in enumerate(args):
            if i in spec.literal_args:
                value = literals[i]
                assert isinstance(value, int | float | str | bool)
                kind = _lit_kind(value)
                sql = render_literal(value)
            else:
                sql, kind = self.expr(a, d, clamp)
            want = spec.kind_of(i)
            if want not in ("any", "same"):
                self._need(kind, want, name)
            if kind == "num" and i not in spec.literal_args:
                sql = f"CAST({sql} AS DOUBLE)"
            rendered.append(sql)
            kinds.append(kind)
        result = spec.result
        if result == "same":
            result = self._common(kinds, name)
        return spec.render(rendered), result

    def _common(self, kinds: list[str], what: str) -> str:
        present = {k for k in kinds if k != "null"}
        if len(present) > 1:
            raise PlanRejectedError(f"{what} mixes {sorted(present)}")
        return present.pop() if present else "null"

    @staticmethod
    def _need(kind: str, want: str, op: str) -> None:
        if kind not in (want, "null"):
            raise PlanRejectedError(f"operator {op} needs {want} operands, got {kind}")

    @staticmethod
    def _same(a: str, b: str, op: str) -> None:
        if a != b and "null" not in (a, b):
            raise PlanRejectedError(f"operator {op} compares {a} with {b}")

    def value(self, agg: Aggregate) -> tuple[str, float, float, bool]:
        """The aggregated value of a bounded aggregate: SQL clamped to its bounds, and the bounds.

        The bounds come from `sandbox.bounds` over this sandbox's catalog; a plan whose declared bounds
        differ is refused (the gateway and the sandbox must agree, and the sandbox never trusts it).
        Booleans aggregate as 0/1; NaN is NULL; integer expressions are summed exactly as BIGINT.
        """
        assert agg.arg is not None
        sql, kind = self.expr(agg.arg, 0, clamp=True)
        if kind not in ("num", "bool"):
            raise PlanRejectedError(f"{agg.kind.value} needs a numeric expression, got {kind}")
        derived = bounds.expression_bounds(agg.arg, self.table)
        if derived is None:
            raise PlanRejectedError("the aggregated expression has no finite bounds")
        lo, hi, integer = derived
        if (agg.lower, agg.upper) != (lo, hi):
            raise PlanRejectedError("the plan's bounds differ from the catalog's")
        if kind == "bool":
            sql = f"(CASE WHEN {sql} THEN 1.0 WHEN NOT {sql} THEN 0.0 END)"
        # A bounded column is already read clamped to exactly these bounds; anything else is clamped here.
        exact_column = isinstance(agg.arg, Column) and kind == "num"
        clamped = sql if exact_column else render_clamp(sql, render_literal(lo), render_literal(hi))
        if integer:
            clamped = f"TRY_CAST({clamped} AS BIGINT)"
        return clamped, lo, hi, integer


def compile_plan(
    plan: QueryPlan, table: TableInfo, *, sql_table: str, unit: str, max_cells: int
) -> CompiledPlan:
    """Type-check `plan` against the catalog `table` and render it as SELECTs.

    Args:
        plan: the plan (dataset/table already resolved by the caller).
        table: the catalog's description of the table.
        sql_table: the DuckDB table holding the truncated rows.
        unit: the privacy-unit column (usable only as COUNT(DISTINCT unit)).
        max_cells: most group-key combinations a plan may ask for.

    Raises:
        PlanRejectedError: unknown or identifier column, type error, key without domain, too many
            cells or nodes, unbounded aggregate. The message depends only on the plan and the catalog.
    """
    c = _Compiler(table, unit)
    keys: list[str] = []
    domains: list[tuple[Scalar, ...]] = []
    where: list[str] = []
    n_cells = 1
    if len({g.expr for g in plan.group_by}) != len(plan.group_by):
        raise PlanRejectedError("a group key appears twice")
    for g in plan.group_by:
        ksql, kkind = c.expr(g.expr)
        if g.domain is None or not g.domain:
            raise PlanRejectedError(f"group key {g.name!r} has no declared domain")
        if len(g.domain) > MAX_IN_VALUES or len(set(g.domain)) != len(g.domain):
            raise PlanRejectedError(f"a group key domain needs 1 to {MAX_IN_VALUES} distinct values")
        for v in g.domain:
            if v is None:
                raise PlanRejectedError("a group key domain cannot contain NULL")
            c._same(kkind, _lit_kind(v), "GROUP BY")
        n_cells *= len(g.domain)
        if n_cells > max_cells:
            raise PlanRejectedError(f"the group keys have more than {max_cells} combinations")
        keys.append(ksql)
        domains.append(g.domain)
        # Only rows whose key is a domain value count; keys in the answer come from the domain only.
        where.append(f"({ksql} IN ({', '.join(render_literal(v) for v in g.domain)}))")
    if plan.where is not None:
        sql, kind = c.expr(plan.where)
        c._need(kind, "bool", "WHERE")
        where.append(sql)
    select = list(keys)
    comps: list[tuple[int, str]] = []
    quantiles: list[tuple[int, str, float, float, bool]] = []
    for i, agg in enumerate(plan.aggregates):
        if agg.kind is AggregateKind.COUNT:
            select.append("count(*)")
            comps.append((i, "count"))
            continue
        if agg.kind is AggregateKind.COUNT_DISTINCT_UNIT:
            select.append(f"count(DISTINCT {quote_ident(unit)})")
            comps.append((i, "count"))
            continue
        if agg.kind is AggregateKind.COUNT_COLUMN:
            assert agg.arg is not None
            sql, _ = c.expr(agg.arg)
            select.append(f"count({sql})")
            comps.append((i, "count"))
            continue
        value, lo, hi, integer = c.value(agg)
        if agg.kind is AggregateKind.QUANTILE:
            quantiles.append((i, value, lo, hi, integer))
            continue
        if agg.kind in VARIANCE_KINDS:
            # Centred and scaled to [-1, 1]: sums of z and z^2 each have sensitivity K per unit.
            centre, half = (lo + hi) / 2, (hi - lo) / 2 or 1.0
            z = f"((CAST({value} AS DOUBLE) - {render_literal(centre)}) / {render_literal(half)})"
            select.append(f"count({value})")
            select.append(f"coalesce(fsum({z}), 0)")
            select.append(f"coalesce(fsum({z} * {z}), 0)")
            comps.extend([(i, "count"), (i, "sum"), (i, "sumsq")])
            continue
        total = "sum" if integer else "fsum"
        select.append(f"coalesce({total}({value}), 0)")
        comps.append((i, "sum"))
        if agg.kind is AggregateKind.AVG:
            select.append(f"count({value})")
            comps.append((i, "count"))
    source = f" FROM {quote_ident(sql_table)}"
    if where:
        source += " WHERE " + " AND ".join(where)
    group = " GROUP BY " + ", ".join(keys) if keys else ""
    sql = f"SELECT {', '.join(select) if select else 'count(*)'}{source}{group}"
    qqueries: list[QuantileQuery] = []
    for i, value, lo, hi, integer in quantiles:
        cands = quantile_candidates(lo, hi, integer)
        m = len(cands)
        if m == 1:
            idx = "0"
        else:
            step = render_literal((hi - lo) / (m - 1))
            raw = f"round((CAST({value} AS DOUBLE) - {render_literal(lo)}) / {step})"
            idx = f"least(greatest(TRY_CAST({raw} AS BIGINT), 0), {m - 1})"
        cond = f"({value}) IS NOT NULL"
        qsource = source + (" AND " if where else " WHERE ") + cond
        qsql = f"SELECT {', '.join([*keys, idx])}, count(*){qsource} GROUP BY {', '.join([*keys, idx])}"
        qqueries.append(QuantileQuery(i, qsql, cands))
    if max([len(sql), *(len(q.sql) for q in qqueries)]) > MAX_SQL_CHARS:
        raise PlanRejectedError("the rendered query is too large")
    cells = tuple(itertools.product(*domains)) if domains else ((),)
    return CompiledPlan(sql=sql, cells=cells, components=tuple(comps), quantiles=tuple(qqueries))


def plan_bounds(agg: Aggregate, table: TableInfo) -> tuple[float, float, bool] | None:
    """The bounds `compile_plan` will clamp `agg`'s argument to (None for unbounded)."""
    return None if agg.arg is None else bounds.expression_bounds(agg.arg, table)


def render_expression(e: Expr, table: TableInfo, unit: str) -> str:
    """SQL for a scalar expression as `compile_plan` renders it outside aggregates (used by the
    gateway to evaluate a group key over public domain values, so both sides agree on the SQL).

    Raises:
        PlanRejectedError: the expression does not type-check against `table`.
    """
    sql, _ = _Compiler(table, unit).expr(e)
    return sql
