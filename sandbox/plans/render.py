"""SQL text from plan expressions: quoting, literals by type, and the expression compiler `compile_plan`
runs over one relation. Every identifier comes from the data owner's catalog and is double-quoted; every
literal is rendered from its Python value; arithmetic runs in DOUBLE, so no error depends on the data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from sandbox.errors import PlanRejectedError
from sandbox.plans import bounds
from sandbox.plans.functions import lookup, render_clamp
from sandbox.plans.names import table_ref
from sandbox.plans.relation import Relation, derived_column, key, source_relation
from sandbox.protocol.catalog import ColumnInfo, DatasetInfo
from sandbox.protocol.plan import (
    ARITHMETIC_OPS,
    COMPARISON_OPS,
    LOGICAL_OPS,
    Aggregate,
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
    PublicJoin,
    Scalar,
    Source,
    TableSource,
    Unary,
    UnitAggregate,
    UnitJoin,
    UnitOutput,
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
_JOIN = {"inner": "INNER JOIN", "left": "LEFT JOIN"}


class PlanTooComplexError(PlanRejectedError):
    """A plan over one of the compiler's size limits (depth, nodes, values, string length, rendered size)."""


class TooManyCellsError(PlanTooComplexError):
    """A plan whose group keys have more combinations than the sandbox answers (`Limits.max_groups`)."""


def quote_ident(name: str) -> str:
    """`name` as a DuckDB identifier: double-quoted, inner quotes doubled."""
    if "\x00" in name:
        raise PlanRejectedError("identifier contains NUL")
    return '"' + name.replace('"', '""') + '"'


def table_sql(name: str, *, stored: bool) -> str:
    """How SQL names the DuckDB table `name`: in the sandbox's store, or in the default database."""
    return table_ref(name) if stored else quote_ident(name)


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


def literal_kind(value: Scalar) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "num"
    return "str"


class ExpressionCompiler:
    """Compiles expressions over one relation (a single table, or a FROM tree's columns)."""

    def __init__(self, rel: Relation, ctx: CompileContext) -> None:
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

    def expr(self, e: Expr, depth: int = 0, clamp: bool = False) -> tuple[str, str]:
        """SQL text and kind ('num', 'str', 'bool', 'null') of an expression.

        With `clamp`, numeric columns are read clamped to their declared bounds (NaN read as NULL),
        as inside aggregates, so that `sandbox.plans.bounds` describes the values exactly.
        """
        self.ctx.nodes += 1
        if depth > MAX_DEPTH or self.ctx.nodes > MAX_NODES:
            raise PlanTooComplexError(f"expression exceeds depth {MAX_DEPTH} or {MAX_NODES} nodes")
        d = depth + 1
        match e:
            case Column():
                if (e.table is None) == self.ctx.qualified:
                    raise PlanRejectedError("column qualification does not match the plan")
                k = key(e)
                col = self.column(k)
                q = self.ref(k)
                kind = _KIND[col.type]
                if clamp and kind == "num":
                    # Stored clamped to the column's bounds with NaN as NULL (sandbox.engine.engine.stored_column),
                    # and derived columns are clamped by construction: read as DOUBLE, which cannot raise.
                    return f"CAST({q} AS DOUBLE)", kind
                return q, kind
            case Literal(value):
                return render_literal(value), literal_kind(value)
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
                    raise PlanTooComplexError(f"IN needs 1 to {MAX_IN_VALUES} values")
                self.ctx.nodes += len(values)
                items = []
                for v in values:
                    self._same(kind, literal_kind(v.value), "IN")
                    items.append(render_literal(v.value))
                return f"({sql} {'NOT ' if negated else ''}IN ({', '.join(items)}))", "bool"
            case Between(operand, low, high, negated):
                sql, kind = self.expr(operand, d, clamp)
                lo, lok = self.expr(low, d, clamp)
                hi, hik = self.expr(high, d, clamp)
                self._same(kind, lok, "BETWEEN")
                self._same(kind, hik, "BETWEEN")
                return f"({sql} {'NOT ' if negated else ''}BETWEEN {lo} AND {hi})", "bool"
            case InUnits(source, where, negated):
                # Semi-join on the privacy unit: the inner query is generated here, never by users.
                # `IS NOT NULL` keeps NOT IN from turning NULL for every row when the inner side
                # holds a NULL unit (which would let one "unit" flip every row's filter).
                inner = self.ctx.sub(source)
                sub = ExpressionCompiler(inner, replace_ctx(self.ctx, qualified=True))
                frm = sub.source(source)
                unit = sub.unit_ref()
                keep = f"({unit} IS NOT NULL)"
                if where is not None:
                    wsql, wk = sub.expr(where, depth + 1)
                    self._need(wk, "bool", "WHERE")
                    keep += f" AND {wsql}"
                self.ctx.nodes = sub.ctx.nodes
                op = "NOT IN" if negated else "IN"
                return f"({self.unit_ref()} {op} (SELECT {unit} FROM {frm} WHERE {keep}))", "bool"
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
                kind = literal_kind(value)
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

    def source(self, s: Source) -> str:
        """SQL text of a FROM tree (every name quoted, every join on the unit or a unique key)."""
        match s:
            case TableSource(table, alias):
                return f"{self.ctx.sql_table(table)} AS {quote_ident(alias)}"
            case UnitJoin(left, right, kind):
                lrel = self.ctx.sub(left)
                lsql = ExpressionCompiler(lrel, self.ctx).source(left)
                lunit = ExpressionCompiler(lrel, self.ctx).unit_ref()
                runit = f"{quote_ident(right.alias)}.{quote_ident(self.ctx.unit)}"
                return (
                    f"{lsql} {_JOIN[kind]} {self.source(right)} ON ({lunit} = {runit})"
                )
            case PublicJoin(left, right, left_key, right_key, kind):
                lrel = self.ctx.sub(left)
                lc = ExpressionCompiler(lrel, self.ctx)
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
                ic = ExpressionCompiler(inner, self.ctx)
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
        if o.kind == "sum" and integer:
            return f"sum({value})"  # exact (HUGEINT), within its exact derived bounds
        if o.kind in ("sum", "avg"):
            # A float sum or mean of values within [L, U] can round an ulp past its derived bound, and
            # the outer query aggregates this column as bounded by it: clamp to the bound pricing uses.
            agg = f"fsum({value})" if o.kind == "sum" else f"avg(CAST({value} AS DOUBLE))"
            d = derived_column(o.name, o.kind, o.column, self.rel)
            assert d.lower is not None and d.upper is not None
            lo, hi = bounds.float_down(d.lower), bounds.float_up(d.upper)  # as `bounds.interval` reads them
            return render_clamp(agg, render_literal(lo), render_literal(hi))
        return f"{o.kind}({value})"  # min, max: one of the clamped values

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

        The bounds come from `sandbox.plans.bounds` over this sandbox's catalog; a plan whose declared bounds
        differ is refused (the gateway and the sandbox must agree, and the sandbox never trusts it).
        Booleans aggregate as 0/1; NaN is NULL; integer expressions are summed exactly as BIGINT.
        """
        assert agg.arg is not None
        sql, kind = self.expr(agg.arg, 0, clamp=True)
        if kind not in ("num", "bool"):
            raise PlanRejectedError(f"{agg.kind.value} needs a numeric expression, got {kind}")
        derived = bounds.expression_bounds(agg.arg, self.rel)
        if derived is None:
            raise PlanRejectedError("the aggregated expression has no finite bounds")
        lo, hi, integer = derived
        if (agg.lower, agg.upper) != (lo, hi):
            raise PlanRejectedError("the plan's bounds differ from the catalog's")
        if kind == "bool":
            sql = f"(CASE WHEN {sql} THEN 1.0 WHEN NOT {sql} THEN 0.0 END)"
        # A bare column is stored clamped to exactly these bounds (sandbox.engine.engine.stored_column): aggregate it
        # as stored (BIGINT sums exactly). Anything else is clamped here.
        if isinstance(agg.arg, Column) and kind == "num":
            return self.ref(key(agg.arg)), lo, hi, integer
        clamped = render_clamp(sql, render_literal(lo), render_literal(hi))
        if integer:
            clamped = f"TRY_CAST({clamped} AS BIGINT)"
        return clamped, lo, hi, integer


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
class CompileContext:
    """What every compiler of one plan shares: catalog, table names, node budget."""

    dataset: DatasetInfo
    sql_tables: Mapping[str, str]
    unit: str
    qualified: bool
    nodes: int = 0
    stored: bool = False

    def sql_table(self, table: str) -> str:
        """The SQL reference of the DuckDB table holding catalog table `table`."""
        if table not in self.sql_tables:
            raise PlanRejectedError(f"unknown table {table!r}")
        return table_sql(self.sql_tables[table], stored=self.stored)

    def sub(self, s: Source) -> Relation:
        return source_relation(s, self.dataset)


def replace_ctx(ctx: CompileContext, *, qualified: bool) -> CompileContext:
    """The same context (shared node budget) with another qualification mode, for subqueries."""
    if ctx.qualified == qualified:
        return ctx
    out = CompileContext(ctx.dataset, ctx.sql_tables, ctx.unit, qualified, ctx.nodes, ctx.stored)
    return out
