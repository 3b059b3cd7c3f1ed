"""Regenerate SQL from a plan tree. No text from outside the sandbox ever reaches DuckDB.

Every identifier comes from the data owner's catalog and is double-quoted; every literal is rendered
from its Python value. The plan is type-checked first, so no comparison needs a runtime cast from a
string (DuckDB's cast errors quote data values), and arithmetic runs in DOUBLE, which cannot raise
(overflow gives inf, division by zero inf or NaN): no error depends on the data (docs/threats.md, section 3).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

from sandbox.errors import PlanRejectedError
from sandbox.plans import bounds
from sandbox.plans.names import sql_table_name
from sandbox.plans.relation import source_relation, table_relation
from sandbox.plans.render import (
    MAX_CANDIDATES,
    MAX_IN_VALUES,
    MAX_SQL_CHARS,
    CompileContext,
    ExpressionCompiler,
    PlanTooComplexError,
    TooManyCellsError,
    literal_kind,
    render_literal,
    table_sql,
)
from sandbox.plans.selection import key_count
from sandbox.protocol.catalog import DatasetInfo, TableInfo
from sandbox.protocol.plan import (
    VARIANCE_KINDS,
    Aggregate,
    AggregateKind,
    Expr,
    QueryPlan,
    Scalar,
)


@dataclass(frozen=True, slots=True)
class CompiledPlan:
    """SQL for a plan and how to read its result.

    Attributes:
        sql: one SELECT over the truncated table.
        cells: every group-key combination in domain order (`((),)` when ungrouped; `()` under
            partition selection, where the keys come from the data and the threshold mechanism).
        components: (aggregate_index, "count" | "sum" | "sumsq" | "select") of each SELECT column
            after the group keys; "select" (index -1) is the per-key row count separate partition
            selection uses (`sandbox.plans.selection`).
        quantiles: one per-cell candidate-count query per quantile aggregate.
    """

    sql: str
    cells: tuple[tuple[Scalar, ...], ...]
    components: tuple[tuple[int, str], ...]
    quantiles: tuple[QuantileQuery, ...] = ()


@dataclass(frozen=True, slots=True)
class QuantileQuery:
    """Per-cell counts of a quantile aggregate's value snapped to the candidate grid.

    `sql` returns rows (group keys..., candidate index, count); the engine rebuilds OpenDP's quantile
    scores from these counts (`sandbox.pricing.mechanisms.quantile_scores`).
    """

    aggregate_index: int
    sql: str
    candidates: tuple[float, ...]
    # True when snapping is the identity: an integer expression on the grid of every integer of
    # [L, U]. A float expression whose grid happens to be integers (e.g. bounds [0, 1023]) is not.
    exact: bool = False


def avg_centre(lo: float, hi: float, integer: bool) -> float:
    """The centre AVG's sum is taken around: sum(x - c) has sensitivity K * max(c - lo, hi - c), half the
    range instead of max(|lo|, |hi|), and the count's noise then only moves the mean by |mean - c| <= half
    the range. Integer arguments keep an integer centre so the sum stays exact and discrete."""
    c = (lo + hi) / 2
    return float(math.floor(c)) if integer else c


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


def compile_plan(
    plan: QueryPlan,
    table: TableInfo,
    *,
    sql_table: str,
    unit: str,
    max_cells: int,
    dataset: DatasetInfo | None = None,
    sql_tables: Mapping[str, str] | None = None,
    stored: bool = False,
) -> CompiledPlan:
    """Type-check `plan` against the catalog `table` and render it as SELECTs.

    Args:
        plan: the plan (dataset/table already resolved by the caller).
        table: the catalog's description of the table.
        sql_table: the DuckDB table holding the truncated rows.
        unit: the privacy-unit column (usable only as COUNT(DISTINCT unit) and in joins).
        max_cells: most group-key combinations a plan may ask for.
        dataset: the catalog's dataset (needed for sources and semi-joins).
        sql_tables: DuckDB table of every catalog table of the dataset (for sources and semi-joins).
        stored: the tables are in the sandbox's compressed store (`sandbox.plans.names.table_ref`), not in
            the connection's default database.

    Raises:
        PlanRejectedError: unknown or identifier column, type error, key without domain, too many
            cells or nodes, unbounded aggregate. The message depends only on the plan and the catalog.
    """
    ds = dataset or DatasetInfo("", unit, (table,), "")
    tables = dict(sql_tables or {}) | {table.name: sql_table}
    ctx = CompileContext(ds, tables, unit, qualified=plan.source is not None, stored=stored)
    rel = table_relation(table, unit) if plan.source is None else source_relation(plan.source, ds)
    c = ExpressionCompiler(rel, ctx)
    keys: list[str] = []
    domains: list[tuple[Scalar, ...]] = []
    where: list[str] = []
    n_cells = 1
    if len({g.expr for g in plan.group_by}) != len(plan.group_by):
        raise PlanRejectedError("a group key appears twice")
    for g in plan.group_by:
        ksql, kkind = c.expr(g.expr)
        keys.append(ksql)
        if g.domain is None:
            # No public domain: the keys come from the data and are released only through DP
            # partition selection in the engine (OpenDP's threshold over per-key row counts).
            if not plan.partition_selection:  # pragma: no cover - the property says otherwise
                raise PlanRejectedError(f"group key {g.name!r} has no declared domain")
            continue
        if not g.domain:
            raise PlanRejectedError(f"group key {g.name!r} has an empty domain")
        if len(g.domain) > MAX_IN_VALUES or len(set(g.domain)) != len(g.domain):
            raise PlanRejectedError(f"a group key domain needs 1 to {MAX_IN_VALUES} distinct values")
        for v in g.domain:
            if v is None:
                raise PlanRejectedError("a group key domain cannot contain NULL")
            c._same(kkind, literal_kind(v), "GROUP BY")
        n_cells *= len(g.domain)
        if n_cells > max_cells and not plan.partition_selection:
            raise TooManyCellsError(f"the group keys have more than {max_cells} combinations")
        domains.append(g.domain)
        # Keys in the answer come from the domain only: the engine releases exactly the domain cells and
        # ignores any other group (restricting the exact vector to fixed cells cannot raise sensitivity).
    if plan.where is not None:
        sql, kind = c.expr(plan.where)
        c._need(kind, "bool", "WHERE")
        where.append(sql)
    select = list(keys)
    comps: list[tuple[int, str]] = []
    if plan.partition_selection and key_count(plan) is None:
        # Separate selection: per-key row counts for the threshold mechanism (otherwise the threshold runs
        # on one of the plan's own counts, `sandbox.plans.selection`).
        select.append("count(*)")
        comps.append((-1, "select"))
    quantiles: list[tuple[int, str, float, float, bool]] = []
    for i, agg in enumerate(plan.aggregates):
        if agg.kind is AggregateKind.COUNT:
            select.append("count(*)")
            comps.append((i, "count"))
            continue
        if agg.kind is AggregateKind.COUNT_DISTINCT_UNIT:
            select.append(f"count(DISTINCT {c.unit_ref()})")
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
        if agg.kind is AggregateKind.AVG:  # a centred sum and a count (see avg_centre)
            centre = avg_centre(lo, hi, integer)
            if integer:
                # sum(x - c) = sum(x) - c * count(x), exactly, in HUGEINT (no per-row subtraction: 9.0 ->
                # 6.9 ms over 10M rows); NULLs drop out of both terms alike
                select.append(f"(coalesce(sum({value}), 0) - CAST({int(centre)} AS HUGEINT) * count({value}))")
            else:  # floats keep the per-row form, so rounding never depends on how the terms are grouped
                select.append(f"coalesce(fsum(({value} - {render_literal(centre)})), 0)")
            select.append(f"count({value})")
            comps.extend([(i, "sum"), (i, "count")])
            continue
        select.append(f"coalesce({total}({value}), 0)")
        comps.append((i, "sum"))
    frm = table_sql(sql_table, stored=stored) if plan.source is None else c.source(plan.source)
    source = f" FROM {frm}"
    if where:
        source += " WHERE " + " AND ".join(where)
    group = " GROUP BY " + ", ".join(keys) if keys else ""
    sql = f"SELECT {', '.join(select) if select else 'count(*)'}{source}{group}"
    qqueries: list[QuantileQuery] = []
    for i, value, lo, hi, integer in quantiles:
        cands = quantile_candidates(lo, hi, integer)
        m = len(cands)
        if m == 1:  # its answer is the one candidate whatever the data (and `GROUP BY 0` is no grouping)
            raise PlanRejectedError("a quantile of an expression with a constant range does not depend on the data")
        step = render_literal((hi - lo) / (m - 1))
        raw = f"round((CAST({value} AS DOUBLE) - {render_literal(lo)}) / {step})"
        idx = f"least(greatest(TRY_CAST({raw} AS BIGINT), 0), {m - 1})"
        cond = f"({value}) IS NOT NULL"
        qsource = source + (" AND " if where else " WHERE ") + cond
        qsql = f"SELECT {', '.join([*keys, idx])}, count(*){qsource} GROUP BY {', '.join([*keys, idx])}"
        exact = integer and (hi - lo) / (m - 1) == 1.0 and float(lo).is_integer()
        qqueries.append(QuantileQuery(i, qsql, cands, exact))
    if max([len(sql), *(len(q.sql) for q in qqueries)]) > MAX_SQL_CHARS:
        raise PlanTooComplexError("the rendered query is too large")
    if plan.partition_selection:
        cells: tuple[tuple[Scalar, ...], ...] = ()
    else:
        cells = tuple(itertools.product(*domains)) if domains else ((),)
    return CompiledPlan(sql=sql, cells=cells, components=tuple(comps), quantiles=tuple(qqueries))


def compile_dataset_plan(plan: QueryPlan, dataset: DatasetInfo, *, max_cells: int) -> CompiledPlan:
    """`compile_plan` exactly as the engine runs it: the dataset's tables by their loaded names, in the store.

    The gateway runs it too, before pricing, so a plan it accepts is one the sandbox compiles (every limit
    here -- depth, nodes, IN lists, strings, cells, rendered size -- is checked once, by this function).

    Raises:
        PlanRejectedError: as `compile_plan` (`PlanTooComplexError` for the size limits).
    """
    table = dataset.table(plan.table)
    if table is None:
        raise PlanRejectedError(f"unknown table {plan.table!r}")
    return compile_plan(
        plan, table, sql_table=sql_table_name(dataset.name, table.name), unit=dataset.privacy_unit,
        max_cells=max_cells, dataset=dataset,
        sql_tables={t.name: sql_table_name(dataset.name, t.name) for t in dataset.tables}, stored=True,
    )


def plan_bounds(agg: Aggregate, table: bounds.Columns) -> tuple[float, float, bool] | None:
    """The bounds `compile_plan` will clamp `agg`'s argument to (None for unbounded)."""
    return None if agg.arg is None else bounds.expression_bounds(agg.arg, table)


def render_expression(e: Expr, table: TableInfo, unit: str) -> str:
    """SQL for a scalar expression as `compile_plan` renders it outside aggregates (used by the
    gateway to evaluate a group key over public domain values, so both sides agree on the SQL).

    Raises:
        PlanRejectedError: the expression does not type-check against `table`.
    """
    ds = DatasetInfo("", unit, (table,), "")
    ctx = CompileContext(ds, {}, unit, qualified=False)
    sql, _ = ExpressionCompiler(table_relation(table, unit), ctx).expr(e)
    return sql
