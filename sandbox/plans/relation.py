"""The relation a plan reads: its columns, their public descriptions, and its per-unit bound K.

Shared by the gateway (analyzer, pricing) and the sandbox (compile, pricing), so both derive the same
sensitivities from their own catalog. Nothing here touches data.

Sensitivity argument (docs/threats.md, section 4). Neighbouring datasets differ by all rows of one privacy unit.

* A private table t keeps at most K_t rows per unit (truncated once per data version at load, the
  choice for a unit depending only on that unit's rows).
* `UnitJoin` (equi-join on the privacy unit, INNER or LEFT): a row of unit u only ever joins rows of
  the same unit u, so the joined relation holds at most K_left * K_right rows of u (LEFT: each left
  row yields max(1, matches) <= K_right rows), and removing u removes exactly those rows and changes
  no other unit's rows. Hence K_join = prod K_t; no extra truncation pass is needed because every
  input is already truncated. Self-joins are refused (they are bounded too, but they square K and
  are the classic way to amplify one person), and so is any other join condition.
* `PublicJoin` with a public lookup table on its declared unique key: each private row matches at
  most one public row (uniqueness is checked by the sandbox at load), so K is unchanged; the public
  table holds no unit's data, so it is identical in neighbouring datasets.
* `UnitAggregate` (GROUP BY the unit): one output row per unit, K = 1; each output is an aggregate
  over at most K_in clamped rows of that unit, so its value lies in derived bounds:
  SUM of [L, U] over <= K rows in [K*min(L, 0), K*max(U, 0)] (exact, rounded outward for floats);
  COUNT in [0, K]; AVG/MIN/MAX in [L, U]. The outer query uses them as declared bounds; the compiler
  clamps the floating-point outputs (SUM of a float column, AVG) to them, since rounding can take a
  float sum or mean of values within [L, U] an ulp outside it.
* `InUnits` (semi-join) only removes rows, and whether a row of unit u stays depends only on u's
  own rows, so it never increases a contribution.

Cells a unit can reach (`Relation.reach`). K bounds the rows of one unit; how many *cells* (group-key
combinations) those rows fall into can be far smaller, and it is what bounds COUNT(DISTINCT unit) (each
reached cell gains exactly 1) and the number of keys partition selection sees change (l0). Every column
of the relation is a function of the rows of a set of *row sources* (its `origins`): a private table
under its alias, or a per-unit subquery. In the relation, the rows of unit u are the combinations
(r_1, ..., r_n) of one row of u from each source (a NULL row when a LEFT join finds none: the join is on
the unit, so either every row of u finds its match in a source or none does); a source t has at most
K_t rows of u (`row_bounds`: `max_rows_per_unit`, 1 for a per-unit subquery). A group key reads columns
whose origins form a set S, so its value on a row of u is a function of that row's projection on S, and
u's rows have at most prod_{t in S} K_t distinct projections. Hence u reaches at most
min(K, prod_{t in S} K_t) cells, S the union over all group keys. A key from a table with one row per
unit (residents) or from a per-unit subquery puts each unit in ONE cell, whatever the other tables' K. A
column of a public lookup table is a function of the lookup key, so it has that key's origins. The
reach is decided from the plan and the catalog only, like K.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from fractions import Fraction

from msgspec.structs import replace

from sandbox.errors import PlanRejectedError
from sandbox.plans.bounds import float_down, float_up
from sandbox.protocol.catalog import ColumnInfo, DatasetInfo, TableInfo
from sandbox.protocol.plan import (
    Between,
    Binary,
    Case,
    Cast,
    Column,
    Expr,
    Func,
    InList,
    IsNull,
    Literal,
    PublicJoin,
    QueryPlan,
    Source,
    TableSource,
    Unary,
    UnitAggregate,
    UnitJoin,
)

MAX_TABLES = 3


@dataclass(frozen=True, slots=True)
class Relation:
    """The columns a plan can name (key -> public description) and the per-unit row bound `k`.

    Keys are `name` for a plan without a source, `alias.name` otherwise. `units` are the keys of the
    privacy-unit columns (usable only in join conditions and semi-joins); `unit` is the primary one
    (the leftmost, never NULL-extended by a LEFT join).
    """

    k: int
    columns: dict[str, ColumnInfo]
    units: frozenset[str]
    unit: str
    aliases: frozenset[str]
    tables: tuple[str, ...] = field(default=())
    left_joined: frozenset[str] = frozenset()  # aliases NULL-extended by a LEFT join
    # Row sources (see the module docstring): the sources each column is a function of, and each
    # source's bound on one unit's rows. Empty for a hand-built relation: `reach` is then K.
    origins: dict[str, frozenset[str]] = field(default_factory=dict)
    row_bounds: dict[str, int] = field(default_factory=dict)

    def column(self, key: str) -> ColumnInfo | None:
        """The column with this key, or None."""
        return self.columns.get(key)

    def reach(self, exprs: Iterable[Expr]) -> int:
        """At most how many distinct values of (exprs...) the rows of one unit take: the cells one unit
        reaches when grouped by `exprs` (see the module docstring). Between 1 and K."""
        sources: set[str] = set()
        for e in exprs:
            cols = expression_columns(e)
            if cols is None:
                return self.k
            for c in cols:
                origin = self.origins.get(c)
                if origin is None:
                    return self.k
                sources |= origin
        bound = math.prod(self.row_bounds[s] for s in sources)
        return max(1, min(bound, self.k))


def expression_columns(e: Expr) -> frozenset[str] | None:
    """The relation keys of every column `e` reads; None for a node whose value may depend on more than
    the row's own columns (a semi-join), or one this function does not know."""
    match e:
        case Column():
            return frozenset({key(e)})
        case Literal():
            return frozenset()
        case Unary(_, operand) | IsNull(operand, _) | Cast(operand, _, _):
            return expression_columns(operand)
        case Binary(_, left, right):
            return _union(expression_columns(left), expression_columns(right))
        case InList(operand, values, _):
            return _union(expression_columns(operand), *(expression_columns(v) for v in values))
        case Between(operand, low, high, _):
            return _union(expression_columns(operand), expression_columns(low), expression_columns(high))
        case Case(whens, else_):
            parts = [expression_columns(x) for w in whens for x in w]
            if else_ is not None:
                parts.append(expression_columns(else_))
            return _union(*parts)
        case Func(_, args):
            return _union(*(expression_columns(a) for a in args))
    return None


def _union(*parts: frozenset[str] | None) -> frozenset[str] | None:
    out: frozenset[str] = frozenset()
    for p in parts:
        if p is None:
            return None
        out |= p
    return out


def plan_reach(plan: QueryPlan, rel: Relation) -> int:
    """The most cells one unit's rows fall into: `Relation.reach` of the group keys, and never more than
    the number of cells when every key has a public domain (1 when ungrouped)."""
    if not plan.group_by:
        return 1
    reach = rel.reach(g.expr for g in plan.group_by)
    if all(g.domain is not None for g in plan.group_by):
        reach = min(reach, math.prod(len(g.domain or ()) for g in plan.group_by))
    return max(1, reach)


def key(col: Column) -> str:
    """The relation key of a plan column."""
    return col.name if col.table is None else f"{col.table}.{col.name}"


def _table(dataset: DatasetInfo, name: str) -> TableInfo:
    t = dataset.table(name)
    if t is None:
        raise PlanRejectedError(f"unknown table {name!r}")
    return t


def plan_relation(plan: QueryPlan, dataset: DatasetInfo) -> Relation:
    """The relation of a plan (its single table, or its source)."""
    if plan.source is None:
        t = _table(dataset, plan.table)
        if t.public:
            raise PlanRejectedError(f"table {t.name!r} is public; join it to a private table")
        return table_relation(t, dataset.privacy_unit)
    rel = source_relation(plan.source, dataset)
    if leftmost_table(plan.source) != plan.table:
        raise PlanRejectedError("the plan's table is not the leftmost table of its source")
    return rel


def table_relation(t: TableInfo, unit: str) -> Relation:
    """The relation of one private table read alone (unqualified column names): one row source."""
    if t.public:
        raise PlanRejectedError(f"table {t.name!r} is public; join it to a private table")
    return Relation(
        k=t.max_rows_per_unit,
        columns={c.name: c for c in t.columns},
        units=frozenset({unit}),
        unit=unit,
        aliases=frozenset({t.name}),
        tables=(t.name,),
        origins={c.name: frozenset({t.name}) for c in t.columns},
        row_bounds={t.name: t.max_rows_per_unit},
    )


def leftmost_table(s: Source) -> str:
    """The first table of a FROM tree (shown as the plan's table)."""
    match s:
        case TableSource(table, _):
            return table
        case UnitJoin(left, _, _) | PublicJoin(left, _, _, _, _):
            return leftmost_table(left)
        case UnitAggregate(inp, _, _, _):
            return leftmost_table(inp)
    raise PlanRejectedError("malformed source")  # pragma: no cover


def _alias_ok(alias: str) -> None:
    if not alias or "." in alias or '"' in alias or len(alias) > 64:
        raise PlanRejectedError("malformed alias")


def source_relation(s: Source, dataset: DatasetInfo) -> Relation:
    """The relation produced by a FROM tree, or PlanRejectedError for a shape whose bound is unknown.

    Raises:
        PlanRejectedError: unknown table, self-join, alias clash, join on a non-unique public key,
            more than MAX_TABLES tables, a public table without a private relation.
    """
    rel = _source(s, dataset)
    if len(rel.tables) > MAX_TABLES:
        raise PlanRejectedError(f"a query may read at most {MAX_TABLES} tables")
    return rel


def _merge_aliases(left: Relation, alias: str) -> frozenset[str]:
    _alias_ok(alias)
    if alias in left.aliases:
        raise PlanRejectedError(f"alias {alias!r} is used twice")
    return left.aliases | {alias}


def _source(s: Source, dataset: DatasetInfo) -> Relation:
    unit = dataset.privacy_unit
    match s:
        case TableSource(name, alias):
            _alias_ok(alias)
            t = _table(dataset, name)
            if t.public:
                raise PlanRejectedError(f"table {name!r} is public; join it to a private table")
            return Relation(
                k=t.max_rows_per_unit,
                columns={f"{alias}.{c.name}": c for c in t.columns},
                units=frozenset({f"{alias}.{unit}"}),
                unit=f"{alias}.{unit}",
                aliases=frozenset({alias}),
                tables=(name,),
                origins={f"{alias}.{c.name}": frozenset({alias}) for c in t.columns},
                row_bounds={alias: t.max_rows_per_unit},
            )
        case UnitJoin(left_s, TableSource(name, alias), kind):
            left = _source(left_s, dataset)
            aliases = _merge_aliases(left, alias)
            t = _table(dataset, name)
            if t.public:
                raise PlanRejectedError(f"table {name!r} is public and has no privacy unit")
            if name in left.tables:
                raise PlanRejectedError(f"table {name!r} is joined with itself")
            return Relation(
                k=left.k * t.max_rows_per_unit,
                columns=left.columns | {f"{alias}.{c.name}": c for c in t.columns},
                units=left.units | {f"{alias}.{unit}"},
                unit=left.unit,
                aliases=aliases,
                tables=(*left.tables, name),
                left_joined=left.left_joined | ({alias} if kind == "left" else set()),
                origins=left.origins | {f"{alias}.{c.name}": frozenset({alias}) for c in t.columns},
                row_bounds=left.row_bounds | {alias: t.max_rows_per_unit},
            )
        case PublicJoin(left_s, TableSource(name, alias), left_key, right_key, kind):
            left = _source(left_s, dataset)
            aliases = _merge_aliases(left, alias)
            t = _table(dataset, name)
            if not t.public:
                raise PlanRejectedError(f"table {name!r} is private; join it on the privacy unit")
            if name in left.tables:
                raise PlanRejectedError(f"table {name!r} is joined with itself")
            if t.unique_key is None or right_key != t.unique_key:
                raise PlanRejectedError(
                    f"public table {name!r} may only be joined on its unique key"
                )
            if not isinstance(left_key, Column):
                raise PlanRejectedError("a public join key must be a column")
            lk = key(left_key)
            lcol, rcol = left.column(lk), t.column(right_key)
            if lcol is None or rcol is None:
                raise PlanRejectedError("unknown join key column")
            if lk in left.units or lcol.grade == "identifier":
                raise PlanRejectedError("identifier columns cannot be join keys of a lookup")
            if _kind(lcol) != _kind(rcol):
                raise PlanRejectedError("the join keys have different types")
            # Each lookup column is a function of the lookup key's value (the key is unique), so it has
            # the key's origins.
            looked_up = left.origins.get(lk)
            return Relation(
                k=left.k,
                columns=left.columns | {f"{alias}.{c.name}": c for c in t.columns},
                units=left.units,
                unit=left.unit,
                aliases=aliases,
                tables=(*left.tables, name),
                left_joined=left.left_joined | ({alias} if kind == "left" else set()),
                origins=left.origins if looked_up is None else
                left.origins | {f"{alias}.{c.name}": looked_up for c in t.columns},
                row_bounds=left.row_bounds,
            )
        case UnitAggregate(inp, _, outputs, alias):
            inner = _source(inp, dataset)
            _alias_ok(alias)
            cols: dict[str, ColumnInfo] = {}
            unit_col = inner.column(inner.unit)
            assert unit_col is not None
            cols[f"{alias}.{unit}"] = replace(unit_col, name=unit)
            for o in outputs:
                if o.name == unit or f"{alias}.{o.name}" in cols:
                    raise PlanRejectedError(f"duplicate per-unit output {o.name!r}")
                cols[f"{alias}.{o.name}"] = derived_column(o.name, o.kind, o.column, inner)
            return Relation(
                k=1,
                columns=cols,
                units=frozenset({f"{alias}.{unit}"}),
                unit=f"{alias}.{unit}",
                aliases=frozenset({alias}),
                tables=inner.tables,
                origins={c: frozenset({alias}) for c in cols},  # one row per unit
                row_bounds={alias: 1},
            )
    raise PlanRejectedError("malformed source")


def _kind(c: ColumnInfo) -> str:
    return "num" if c.type in ("int64", "float64") else c.type


def derived_column(name: str, kind: str, column: Column | None, inner: Relation) -> ColumnInfo:
    """The public description of a per-unit aggregate over at most `inner.k` rows of one unit."""
    k = inner.k
    if kind == "count_star":
        return ColumnInfo(name, "int64", "sensitive", lower=0, upper=k)
    assert column is not None
    ck = key(column)
    col = inner.column(ck)
    if col is None:
        raise PlanRejectedError(f"unknown column {ck!r}")
    if ck in inner.units or col.grade == "identifier":
        raise PlanRejectedError(f"column {ck!r} is an identifier and cannot be aggregated")
    if kind == "count":
        return ColumnInfo(name, "int64", "sensitive", lower=0, upper=k)
    if col.type not in ("int64", "float64") or col.lower is None or col.upper is None:
        raise PlanRejectedError(f"column {ck!r} has no declared numeric bounds")
    lo, hi = col.lower, col.upper
    if kind == "sum":  # computed exactly: an int for int64 (may exceed 2^53), else floats rounded outward
        low, high = k * min(Fraction(lo), Fraction(0)), k * max(Fraction(hi), Fraction(0))
        if col.type == "int64" and low.denominator == high.denominator == 1:
            return ColumnInfo(name, col.type, "sensitive", lower=int(low), upper=int(high))
        return ColumnInfo(name, col.type, "sensitive", lower=float_down(low), upper=float_up(high))
    if kind == "avg":
        return ColumnInfo(name, "float64", "sensitive", lower=float(lo), upper=float(hi))
    return ColumnInfo(name, col.type, "sensitive", lower=lo, upper=hi)  # min, max
