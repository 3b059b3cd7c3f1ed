"""Expressions, derived bounds, the new aggregates' mechanisms, and gateway post-processing."""

from __future__ import annotations

import math
import random

import duckdb
import opendp.prelude as dp
import pytest

from gateway.products.query.postprocess import OrderItem, PostProcess, apply
from sandbox.engine.engine import stored_column
from sandbox.engine.guard import check_select
from sandbox.errors import PlanRejectedError
from sandbox.plans.bounds import expression_bounds
from sandbox.plans.compile import compile_plan, quantile_candidates
from sandbox.plans.render import quote_ident
from sandbox.pricing import mechanisms
from sandbox.protocol.messages import (
    Aggregate,
    AggregateKind,
    Binary,
    Case,
    Cast,
    Column,
    ColumnInfo,
    DatasetInfo,
    ExecuteResult,
    Expr,
    Func,
    GroupKey,
    Literal,
    NoisyValue,
    OutputColumn,
    QueryPlan,
    ReleaseRow,
    TableInfo,
    Unary,
    plan_from_json,
    plan_to_json,
)

K = 3
TABLE = TableInfo(
    "t",
    (
        ColumnInfo("pid", "int64", "identifier"),
        ColumnInfo("age", "int64", "public", lower=0, upper=100),
        ColumnInfo("x", "float64", "sensitive", lower=-2.0, upper=4.0),
        ColumnInfo("free", "float64", "sensitive"),
        ColumnInfo("s", "string", "public", domain=("a", "b")),
        ColumnInfo("flag", "bool", "public", domain=(False, True)),
    ),
    max_rows_per_unit=K,
)
DATASET = DatasetInfo("d", "pid", (TABLE,), version="v")
AGE, X, FREE = Column("age"), Column("x"), Column("free")


def _agg(kind: AggregateKind, arg: Expr | None, quantile: float | None = None) -> Aggregate:
    b = None if arg is None else expression_bounds(arg, TABLE)
    lo, hi = (b[0], b[1]) if b else (None, None)
    if kind in (AggregateKind.COUNT, AggregateKind.COUNT_COLUMN, AggregateKind.COUNT_DISTINCT_UNIT):
        lo = hi = None
    return Aggregate(kind, arg, 1.0, lo, hi, quantile)


def _plan(*aggs: Aggregate, keys: tuple[GroupKey, ...] = ()) -> QueryPlan:
    return QueryPlan("d", "t", aggs, (OutputColumn("v", aggregate_index=0),), None, keys)


# --- bounds ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (AGE, (0.0, 100.0, True)),
        (X, (-2.0, 4.0, False)),
        (Binary("*", X, Literal(-2)), (-8.0, 4.0, False)),
        (Binary("-", AGE, X), (-4.0, 102.0, False)),
        (Binary("*", X, X), (-8.0, 16.0, False)),
        (Binary("/", AGE, Literal(-4)), (-25.0, 0.0, False)),
        (Binary("%", AGE, Literal(7)), (0.0, 7.0, True)),
        (Unary("-", X), (-4.0, 2.0, False)),
        (Case(((Binary(">", AGE, Literal(30)), Literal(1)),), Literal(0)), (0.0, 1.0, True)),
        (Case(((Binary(">", AGE, Literal(30)), X),), Literal(10)), (-2.0, 10.0, False)),
        (Case(((Binary(">", AGE, Literal(30)), Literal(5)),)), (5.0, 5.0, True)),
        (Func("CLAMP", (FREE, Literal(-1), Literal(3))), (-1.0, 3.0, False)),
        (Func("CLAMP", (AGE, Literal(-1), Literal(3))), (0.0, 3.0, True)),
        (Func("CLAMP", (X, Literal(0), Literal(10))), (0.0, 4.0, False)),
        (Func("ABS", (X,)), (0.0, 4.0, False)),
        (Func("LEAST", (AGE, Literal(10))), (0.0, 10.0, True)),
        (Func("GREATEST", (X, Literal(0))), (0.0, 4.0, False)),
        (Func("COALESCE", (X, Literal(9))), (-2.0, 9.0, False)),
        (Func("ROUND", (X, Literal(0))), (-2.0, 4.0, True)),
        (Func("FLOOR", (Binary("/", AGE, Literal(3)),)), (0.0, 33.0, True)),
        (Func("SQRT", (AGE,)), (0.0, 10.0, False)),
        (Func("POWER", (X, Literal(2))), (0.0, 16.0, False)),
        (Func("SIGN", (X,)), (-1.0, 1.0, True)),
        (Column("flag"), (0.0, 1.0, True)),
        (Binary(">", X, Literal(1)), (0.0, 1.0, True)),
        (Cast(X, "int64"), (-2.0, 4.0, True)),
    ],
)
def test_interval_rules(expr: Expr, expected: tuple[float, float, bool]) -> None:
    assert expression_bounds(expr, TABLE) == expected


@pytest.mark.parametrize(
    "expr",
    [
        FREE,
        Binary("*", AGE, FREE),
        Binary("/", AGE, X),  # division by a column: never bounded
        Func("LN", (X,)),  # -inf at 0
        Func("LENGTH", (Column("s"),)),
        Cast(Column("s"), "float64"),
        Column("s"),
        Binary("*", Binary("*", AGE, Literal(1e10)), Literal(1e10)),  # beyond 2**53
    ],
)
def test_unbounded_expressions(expr: Expr) -> None:
    assert expression_bounds(expr, TABLE) is None


# --- compile: new nodes render safely and never raise on data ------------------------------------


def _con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(
        'CREATE TABLE "d__t" (pid BIGINT, age BIGINT, x DOUBLE, free DOUBLE, s VARCHAR, flag BOOLEAN)'
    )
    con.execute(
        "INSERT INTO d__t VALUES (1, 20, 1.0, 'nan', 'a', true), (2, 50, 'inf', 1e300, 'b', false), "
        "(3, 90, -1e300, '-inf', 'xyz', NULL), (3, NULL, NULL, NULL, NULL, NULL), "
        "(4, -5, 'nan', -2.0, '12', true)"
    )
    # Stored as the engine stores tables at load: clamped to the catalog bounds, NaN as NULL.
    stored = ", ".join(f"{stored_column(c)} AS {quote_ident(c.name)}" for c in TABLE.columns)
    con.execute(f'CREATE OR REPLACE TABLE "d__t" AS SELECT {stored} FROM "d__t"')
    return con


NASTY: list[Expr] = [
    Func("SQRT", (Binary("-", FREE, Literal(1e308)),)),
    Func("LN", (FREE,)),
    Func("EXP", (FREE,)),
    Func("POWER", (FREE, Literal(8))),
    Func("ROUND", (FREE, Literal(15))),
    Func("ABS", (Binary("*", FREE, FREE),)),
    Cast(Column("s"), "int64"),
    Cast(FREE, "int64"),
    Cast(Column("s"), "bool"),
    Func("SUBSTRING", (Column("s"), Literal(-1_000_000), Literal(1_000_000))),
    Func("CONCAT", (Column("s"), FREE, Column("flag"))),
    Func("NULLIF", (X, Literal(1.0))),
    Binary("%", FREE, Literal(3)),
    Binary("/", FREE, Literal(1e-300)),
]


@pytest.mark.parametrize("expr", NASTY, ids=[str(i) for i in range(len(NASTY))])
def test_functions_never_raise_on_nan_inf_huge_or_bad_strings(expr: Expr) -> None:
    """Every allowlisted rendering runs on NaN, +-inf, 1e300, NULL and non-numeric strings."""
    numeric = not (isinstance(expr, Func) and expr.name in ("SUBSTRING", "CONCAT")) and not (
        isinstance(expr, Cast) and expr.to == "bool"
    )
    plans = [_plan(Aggregate(AggregateKind.COUNT_COLUMN, expr))]
    if numeric:
        arg = Func("CLAMP", (expr, Literal(-5), Literal(5)))
        plans.append(_plan(_agg(AggregateKind.SUM, arg), _agg(AggregateKind.VAR_SAMP, arg)))
    con = _con()
    for plan in plans:
        compiled = compile_plan(plan, TABLE, sql_table="d__t", unit="pid", max_cells=10)
        check_select(con, compiled.sql, {"d__t"})
        for (v,) in [r[-1:] for r in con.execute(compiled.sql).fetchall()]:
            assert v is not None and math.isfinite(v)


def test_cast_is_always_try_cast_and_sums_are_clamped() -> None:
    arg = Func("CLAMP", (Cast(Column("s"), "float64"), Literal(0), Literal(10)))
    plan = _plan(_agg(AggregateKind.SUM, arg), _agg(AggregateKind.AVG, X))
    compiled = compile_plan(plan, TABLE, sql_table="d__t", unit="pid", max_cells=10)
    assert "TRY_CAST" in compiled.sql and " CAST(\"s\"" not in compiled.sql
    con = _con()
    check_select(con, compiled.sql, {"d__t"})
    # s: 'a','b','xyz' -> NULL; '12' -> 12 clamped to 10. x: 1.0, inf->4, -1e300->-2, NaN/NULL skipped;
    # AVG sums x - 1 (the centre of x's bounds [-2, 4]): 0 + 3 - 3
    assert con.execute(compiled.sql).fetchall() == [(10.0, 0.0, 3)]


def test_plan_bounds_must_match_the_sandbox_catalog() -> None:
    bad = Aggregate(AggregateKind.SUM, X, 1.0, -1.0, 1.0)
    with pytest.raises(PlanRejectedError, match="bounds differ"):
        compile_plan(_plan(bad), TABLE, sql_table="d__t", unit="pid", max_cells=10)


def test_unlisted_function_refused_by_compiler() -> None:
    plan = _plan(Aggregate(AggregateKind.COUNT_COLUMN, Func("RANDOM", ())))
    with pytest.raises(PlanRejectedError, match="allowlisted"):
        compile_plan(plan, TABLE, sql_table="d__t", unit="pid", max_cells=10)


def test_expression_group_key_filters_to_its_domain() -> None:
    key = GroupKey("decade", Binary("*", Func("FLOOR", (Binary("/", AGE, Literal(10)),)), Literal(10)),
                   (0.0, 10.0, 20.0, 50.0, 90.0))
    plan = _plan(Aggregate(AggregateKind.COUNT_DISTINCT_UNIT), keys=(key,))
    compiled = compile_plan(plan, TABLE, sql_table="d__t", unit="pid", max_cells=10)
    assert "count(DISTINCT \"pid\")" in compiled.sql
    con = _con()
    check_select(con, compiled.sql, {"d__t"})
    got = dict(con.execute(compiled.sql).fetchall())
    # -5 is stored clamped to the bound 0; the NULL age's group is outside the domain, and the engine
    # releases domain cells only (the SQL no longer filters them).
    assert {k: v for k, v in got.items() if k in key.domain} == {0.0: 1, 20.0: 1, 50.0: 1, 90.0: 1}
    assert compiled.cells == ((0.0,), (10.0,), (20.0,), (50.0,), (90.0,))
    assert plan_from_json(plan_to_json(plan)) == plan


# --- pricing: exact OpenDP maps ------------------------------------------------------------------


@pytest.mark.parametrize("epsilon", [0.1, 1.0, 2.5])
def test_every_new_mechanism_charges_exactly_its_opendp_map(epsilon: float) -> None:
    plan = _plan(
        Aggregate(AggregateKind.COUNT_DISTINCT_UNIT),
        _agg(AggregateKind.VAR_POP, X),
        _agg(AggregateKind.QUANTILE, AGE, 0.5),
        _agg(AggregateKind.QUANTILE, X, 0.9),
        _agg(AggregateKind.SUM, Binary("*", X, Literal(3))),
        keys=(GroupKey("s", Column("s"), ("a", "b")),),
    )
    costs = mechanisms.price(plan, DATASET, epsilon)
    assert [(c.aggregate_index, c.component) for c in costs] == [
        (0, "count"), (1, "count"), (1, "sum"), (1, "sumsq"), (2, "quantile"), (2, "interval"),
        (3, "quantile"), (3, "interval"), (4, "sum"),
    ]
    assert costs[0].sensitivity == min(K, 2)  # a unit is in at most min(K, cells) groups
    for c in costs:
        if c.mechanism == mechanisms.NOISY_MAX:
            agg = plan.aggregates[c.aggregate_index]
            assert agg.lower is not None and agg.upper is not None and agg.quantile is not None
            cands = quantile_candidates(*mechanisms.aggregate_bounds(agg, TABLE))
            meas = mechanisms.quantile_measurement(cands, agg.quantile, c.scale)
            assert c.epsilon == meas.map(K)
        else:
            integer = c.mechanism == mechanisms.DISCRETE_LAPLACE
            meas = mechanisms.make_measurement(integer, c.scale)
            assert c.epsilon == meas.map(int(c.sensitivity) if integer else c.sensitivity)
    assert mechanisms.total_epsilon(costs) <= epsilon
    assert mechanisms.total_epsilon(costs) > epsilon * (1 - 1e-6)
    shares = [c.epsilon for c in costs]
    assert shares[1] == pytest.approx(epsilon / 5 / 3, rel=1e-6)  # VAR splits its share in three
    assert shares[4] == pytest.approx(epsilon / 5 / 2, rel=1e-6)  # a quantile's point: half its share
    assert shares[5] == pytest.approx(epsilon / 5 / 2, rel=1e-6)  # and its interval the other half
    assert shares[8] == pytest.approx(epsilon / 5, rel=1e-6)


def test_unbounded_aggregate_is_refused_by_pricing() -> None:
    plan = _plan(Aggregate(AggregateKind.SUM, FREE, 1.0, 0.0, 1.0))
    with pytest.raises(PlanRejectedError, match="finite bounds"):
        mechanisms.price(plan, DATASET, 1.0)


# --- quantile scores rebuilt from counts equal OpenDP's -------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.1, 0.25, 0.5, 0.77, 0.9, 1.0])
def test_count_based_scores_equal_opendp_scores(alpha: float) -> None:
    rng = random.Random(int(alpha * 1000))
    cands = quantile_candidates(0.0, 50.0, False)[:200] if alpha > 0.5 else tuple(
        float(v) for v in range(0, 31)
    )
    for _ in range(5):
        n = rng.randrange(0, 400)
        idx = [rng.randrange(len(cands)) for _ in range(n)]
        counts = [0] * len(cands)
        for j in idx:
            counts[j] += 1
        data = [cands[j] for j in idx]
        ours = mechanisms.quantile_scores(counts, alpha)
        theirs = mechanisms.score_transformation(cands, alpha)(data)
        assert ours == list(theirs)


def test_quantile_release_picks_from_the_grid() -> None:
    cands = tuple(float(v) for v in range(11))
    d = float(mechanisms.score_transformation(cands, 0.5).map(1))
    c = mechanisms.Component(0, "quantile", True, d, 1.0, cands, 0.5, 1)
    scale, eps = mechanisms.calibrate_quantile(c, 50.0)
    assert eps == mechanisms.quantile_measurement(cands, 0.5, scale).map(1) <= 50.0
    from sandbox.protocol.messages import ReleaseCost

    cost = ReleaseCost(0, "quantile", mechanisms.NOISY_MAX, 0.0, scale, eps)
    counts = [0] * 11
    counts[7] = 1000
    assert mechanisms.release_quantile(cost, cands, 0.5, counts) == 7


# --- variance interval ------------------------------------------------------------------------------


def _var_costs(scale: float) -> tuple[mechanisms.ReleaseCost, ...]:
    from sandbox.protocol.messages import ReleaseCost

    return (
        ReleaseCost(0, "count", mechanisms.DISCRETE_LAPLACE, 1.0, scale, 1.0),
        ReleaseCost(0, "sum", mechanisms.LAPLACE, 1.0, scale, 1.0),
        ReleaseCost(0, "sumsq", mechanisms.LAPLACE, 1.0, scale, 1.0),
    )


@pytest.mark.parametrize(
    "kind",
    [AggregateKind.VAR_POP, AggregateKind.VAR_SAMP, AggregateKind.STDDEV_POP, AggregateKind.STDDEV_SAMP],
)
def test_variance_without_noise_is_exact_and_inside_bounds(kind: AggregateKind) -> None:
    xs = [1.0, 2.0, 2.0, 3.0, 7.0]
    lo, hi = 0.0, 8.0
    c, h = 4.0, 4.0
    z = [(x - c) / h for x in xs]
    v = mechanisms.noisy_variance(kind, *_var_costs(1e-9), len(xs), sum(z), sum(t * t for t in z), lo, hi)
    mean = sum(xs) / len(xs)
    pop = sum((x - mean) ** 2 for x in xs) / len(xs)
    truth = {AggregateKind.VAR_POP: pop, AggregateKind.VAR_SAMP: pop * 5 / 4,
             AggregateKind.STDDEV_POP: math.sqrt(pop), AggregateKind.STDDEV_SAMP: math.sqrt(pop * 5 / 4)}[kind]
    assert v.value == pytest.approx(truth, rel=1e-6)
    assert v.ci_lower <= truth + 1e-6 and truth - 1e-6 <= v.ci_upper


def test_variance_interval_is_whole_range_when_count_is_tiny() -> None:
    v = mechanisms.noisy_variance(AggregateKind.VAR_POP, *_var_costs(10.0), 1.0, 0.0, 0.0, 0.0, 2.0)
    assert (v.ci_lower, v.ci_upper) == (0.0, 1.0)


# --- post-processing ----------------------------------------------------------------------------


def _nv(v: float) -> NoisyValue:
    return NoisyValue(v, "laplace", 1.0, 1.0, v - 1, v + 1)


def test_postprocess_having_order_limit() -> None:
    result = ExecuteResult(
        rows=tuple(ReleaseRow((k,), (_nv(n), _nv(s))) for k, n, s in
                   [("a", 5, 1.0), ("b", 50, 3.0), ("c", 20, 2.0), ("d", 30, 0.5)]),
        costs=(),
        dataset_version="v",
    )
    post = PostProcess(
        having=Binary(">", Column("a0"), Literal(10)),
        order_by=(OrderItem("a1", descending=True),),
        limit=2,
    )
    out = apply(post, result)
    assert [r.keys[0] for r in out.rows] == ["b", "c"]
    assert [r.keys[0] for r in apply(PostProcess(order_by=(OrderItem("k0", True),), offset=1,
                                                 limit=10), result).rows] == ["c", "b", "a"]
    assert apply(PostProcess(), result) is result


def test_dp_opendp_score_metric_is_linf() -> None:
    t = mechanisms.score_transformation((0.0, 1.0), 0.5)
    assert "LInf" in str(t.output_metric)
    assert isinstance(dp.max_divergence(), type(dp.max_divergence()))
