"""Sensitivities are exact near and above 2^53: integer ones in Python ints handed to OpenDP's i64
measurements, float ones never below the exact product, and anything OpenDP cannot take is refused.

Each case is one where the float arithmetic the sandbox used to do rounds the sensitivity DOWN (asserted
first), so charging from it would under-price the release.
"""

from __future__ import annotations

import math
from decimal import Decimal, getcontext
from fractions import Fraction
from pathlib import Path

import duckdb
import opendp.prelude as dp
import pytest

from gateway.errors import InvalidQueryError
from gateway.products.query.request import AccuracyRequest
from gateway.products.query.weights import priced, solve_for_accuracy
from sandbox.catalog import load_catalog
from sandbox.engine.engine import Engine
from sandbox.plans.compile import avg_centre
from sandbox.pricing import mechanisms, zcdp
from sandbox.pricing import models as mp
from sandbox.pricing.mechanisms import SensitivityTooLargeError, components, float_up
from sandbox.protocol.messages import (
    Aggregate,
    AggregateKind,
    Column,
    ColumnInfo,
    DatasetInfo,
    ExecuteRequest,
    ExecuteResult,
    NoisyValue,
    QueryPlan,
    ReleaseCost,
    ReleaseRow,
    TableInfo,
    decode_body,
    encode_frame,
)

dp.enable_features("contrib")

TOP = 2**53 - 1  # the largest integer bound below 2^53 (the catalog allows magnitudes up to 2^53)
I64 = dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64")


def _dataset(k: int, col: ColumnInfo) -> DatasetInfo:
    return DatasetInfo("d", "pid", (TableInfo("t", (ColumnInfo("pid", "int64", "identifier"), col), k),), "v")


def _plan(kind: AggregateKind, lo: float, hi: float) -> QueryPlan:
    return QueryPlan("d", "t", (Aggregate(kind, Column("v"), 1.0, lo, hi),), ())


def _int_col(lo: int, hi: int) -> ColumnInfo:
    return ColumnInfo("v", "int64", "sensitive", lower=lo, upper=hi)


def test_opendp_rounds_an_i64_d_in_up() -> None:
    """What the exact ints rely on: OpenDP's i64 Laplace converts d_in to float rounding up, so 2^53 + 1
    (not a float) costs more than 2^53, and refuses values above 2^63 - 1."""
    m = dp.m.make_laplace(*I64, scale=1.0)
    assert m.map(2**53 + 1) > m.map(2**53) == 2.0**53
    with pytest.raises(ValueError, match="not representable by i64"):
        m.map(2**63)


def test_sum_sensitivity_is_the_exact_int() -> None:
    k = 3
    assert int(k * float(TOP)) < k * TOP  # the float product rounds down (by 1)
    ds = _dataset(k, _int_col(0, TOP))
    (c,) = components(_plan(AggregateKind.SUM, 0.0, float(TOP)), ds)
    assert c.integer and type(c.sensitivity) is int and c.sensitivity == k * TOP
    (cost,) = mechanisms.price(_plan(AggregateKind.SUM, 0.0, float(TOP)), ds, 1.0)
    assert cost.sensitivity == k * TOP and type(cost.sensitivity) is int
    assert cost.epsilon == dp.m.make_laplace(*I64, scale=cost.scale).map(k * TOP) <= 1.0
    # zCDP: the discrete Gaussian at the same exact d_in
    (zcost,) = zcdp.price(_plan(AggregateKind.SUM, 0.0, float(TOP)), ds, 0.5)
    g = dp.m.make_gaussian(dp.vector_domain(dp.atom_domain(T="i64")), dp.l2_distance(T="i64"),
                           scale=zcost.scale)
    assert zcost.sensitivity == k * TOP and zcost.rho == g.map(k * TOP) <= 0.5


def test_negative_bounds_and_the_centred_avg_bound_are_exact() -> None:
    k, hi = 3, 2**53 - 3
    centre = avg_centre(0.0, float(hi), True)
    exact = k * max(int(centre), hi - int(centre))
    assert k * max(centre, hi - centre) < exact  # float rounds the centred bound down
    (s, n) = components(_plan(AggregateKind.AVG, 0.0, float(hi)), _dataset(k, _int_col(0, hi)))
    assert (s.component, s.sensitivity, n.component, n.sensitivity) == ("sum", exact, "count", k)
    (neg,) = components(_plan(AggregateKind.SUM, -float(TOP), 5.0), _dataset(k, _int_col(-TOP, 5)))
    assert neg.sensitivity == k * TOP


def test_counts_with_a_per_unit_bound_above_2_53_are_exact() -> None:
    k = 2**53 + 1
    assert float(k) < k
    ds = _dataset(k, _int_col(0, 1))
    plan = QueryPlan("d", "t", (Aggregate(AggregateKind.COUNT),), ())
    (c,) = components(plan, ds)
    assert c.sensitivity == k and type(c.sensitivity) is int
    (cost,) = mechanisms.price(plan, ds, 1.0)
    assert cost.epsilon == dp.m.make_laplace(*I64, scale=cost.scale).map(k) <= 1.0
    # VAR's z-sums are float releases with sensitivity K: rounded up, not to nearest
    var = components(_plan(AggregateKind.VAR_POP, 0.0, 1.0), ds)
    assert [(v.component, v.integer) for v in var] == [("count", True), ("sum", False), ("sumsq", False)]
    assert var[0].sensitivity == k and var[1].sensitivity == var[2].sensitivity == 2.0**53 + 2


def test_float_sensitivity_is_rounded_up() -> None:
    k, hi = 3, 0.7
    assert Fraction(k * hi) < k * Fraction(hi)  # 3 * 0.7 rounds down
    col = ColumnInfo("v", "float64", "sensitive", lower=0.0, upper=hi)
    (c,) = components(_plan(AggregateKind.SUM, 0.0, hi), _dataset(k, col))
    assert not c.integer and c.sensitivity == math.nextafter(k * hi, math.inf)
    assert Fraction(c.sensitivity) >= k * Fraction(hi)
    (a, _) = components(_plan(AggregateKind.AVG, 0.0, hi), _dataset(k, col))
    # AVG's centre is hi / 2 (exact), so its centred bound is K * hi / 2, rounded up
    assert a.sensitivity == float_up(k * Fraction(hi) / 2) >= k * Fraction(hi) / 2


def test_float_up_is_the_smallest_float_at_or_above() -> None:
    for x in (Fraction(1, 3), Fraction(2**53 + 1), 3 * Fraction(0.7), Fraction(-7, 10), Fraction(5)):
        f = float_up(x)
        assert Fraction(f) >= x and Fraction(math.nextafter(f, -math.inf)) < x
    assert float_up(2**53 + 1) == 2.0**53 + 2 and float_up(2**53) == 2.0**53


def test_integer_sensitivity_beyond_i64_is_refused() -> None:
    """K * bound above 2^63 - 1 cannot be an OpenDP i64 d_in: refused (never rounded down), and the
    gateway answers it as the consumer's error (UNBOUNDED_EXPRESSION), not INTERNAL."""
    ok = _dataset(1023, _int_col(0, 2**53))
    (c,) = components(_plan(AggregateKind.SUM, 0.0, 2.0**53), ok)
    assert c.sensitivity == 1023 * 2**53 <= mechanisms.MAX_I64
    (cost,) = mechanisms.price(_plan(AggregateKind.SUM, 0.0, 2.0**53), ok, 1.0)
    assert cost.epsilon == dp.m.make_laplace(*I64, scale=cost.scale).map(1023 * 2**53) <= 1.0
    big = _dataset(1024, _int_col(0, 2**53))
    plan = _plan(AggregateKind.SUM, 0.0, 2.0**53)
    with pytest.raises(SensitivityTooLargeError, match="exceeds 2\\^63 - 1"):
        components(plan, big)
    with pytest.raises(SensitivityTooLargeError):
        zcdp.price(plan, big, 0.5)
    with pytest.raises(InvalidQueryError) as info:
        priced(plan, lambda: mechanisms.price(plan, big, 1.0))
    assert info.value.reason == "UNBOUNDED_EXPRESSION"
    with pytest.raises(InvalidQueryError) as info:
        solve_for_accuracy(plan, big, AccuracyRequest(1e20))
    assert info.value.reason == "UNBOUNDED_EXPRESSION"


def test_an_exact_int_sensitivity_survives_the_wire() -> None:
    from sandbox.protocol.messages import ExecuteResult as Result

    cost = ReleaseCost(0, "sum", mechanisms.DISCRETE_LAPLACE, 2**60 + 1, 1e18, 0.5)
    msg = Result((ReleaseRow((), (NoisyValue(1, "x", 1.0, 1.0, 0.0, 2.0),)),), (cost,), "v")
    back = decode_body(encode_frame(msg)[4:])
    assert isinstance(back, Result) and back.costs == (cost,)
    assert type(back.costs[0].sensitivity) is int


# -- models ------------------------------------------------------------------------------------------


def _design(k: int, groups: int = 2) -> mp.Design:
    terms = tuple(mp.Term(f"x{i}", f"x{i}", "numeric", 0.0, 1.0) for i in range(groups - 1))
    return mp.Design("t", terms, mp.Label("y", "numeric", 0.0, 1.0), groups, k)


def test_model_sensitivities_are_exact_ints_and_refused_beyond_i64() -> None:
    d = _design(1000)
    sens = mp.linear_sensitivity(d)
    assert sens == 1000 * mp.Q * mp.Q * (3 * 3 + 3) // 2  # G = 3 groups: intercept, x0, label
    (cost,) = mp.price_linear(d, 1.0)
    assert Fraction(cost.sensitivity) >= sens
    assert cost.epsilon == dp.m.make_laplace(*I64, scale=cost.scale).map(sens) <= 1.0
    for e in mp.price_eval(d, "linear", 1.0):
        assert e.sensitivity in [float(s) for s in mp.eval_linear_sensitivities(d)]
    huge = _design(2**40)
    assert mp.linear_sensitivity(huge) > mechanisms.MAX_I64
    with pytest.raises(mp.ModelSpecError) as info:
        mp.price_linear(huge, 1.0)
    assert info.value.reason == "INVALID_FEATURES"
    with pytest.raises(mp.ModelSpecError):
        mp.price_eval(_design(2**32), "linear", 1.0)  # K Q^2 = 2^64


@pytest.mark.parametrize("k", [1, 3, 12, 1000, 2**20 + 7])
@pytest.mark.parametrize("groups", [2, 5, 17, 65])
@pytest.mark.parametrize("clip", [0.0, 0.1, 0.7, 1.3])
def test_logistic_bounds_hold_in_exact_arithmetic(k: int, groups: int, clip: float) -> None:
    """The gradient d_in is the ceiling of K (C Q + sqrt(p)/2) computed exactly (never a rounded-down
    float product), and the Hessian's quantization keeps K (Q_H G/4 + sqrt(m)/2) within it exactly."""
    getcontext().prec = 60
    d = _design(k, groups)
    c = Decimal(mp.clip_bound(d, clip))
    sens = mp.logistic_sensitivity(d, clip)
    bound = k * (c * mp.Q + Decimal(d.p).sqrt() / 2)
    assert bound <= sens < bound + 1 + Decimal("1e-12")
    try:
        qh = mp.hessian_quantization(d, clip)
    except mp.ModelSpecError:
        return  # a clip too small for any Hessian quantization
    m = Decimal(mp.hessian_entries(d))
    assert k * (qh * Decimal(groups) / 4 + m.sqrt() / 2) <= sens


# -- end to end: the engine releases a sum whose sensitivity is above 2^53 --------------------------


def test_engine_releases_a_sum_priced_at_an_exact_sensitivity_above_2_53(tmp_path: Path) -> None:
    con = duckdb.connect()
    con.execute(f"COPY (SELECT p AS pid, CAST({TOP} AS BIGINT) - p AS v FROM range(4) a(p), range(3) b(i)) "
                f"TO '{tmp_path / 't.parquet'}' (FORMAT parquet)")
    (tmp_path / "catalog.toml").write_text(f"""
schema = "privacy_gateway.catalog.v1"
data_dir = "."
[datasets.d]
privacy_unit = "pid"
[datasets.d.tables.t]
file = "t.parquet"
max_rows_per_unit = 3
[datasets.d.tables.t.columns]
pid = {{ type = "int64", grade = "identifier" }}
v   = {{ type = "int64", grade = "sensitive", lower = 0, upper = {TOP} }}
""")
    engine = Engine(load_catalog(tmp_path / "catalog.toml"))
    reply = engine.execute(ExecuteRequest("big-sum", _plan(AggregateKind.SUM, 0.0, float(TOP)), 1.0))
    assert isinstance(reply, ExecuteResult)
    (cost,) = reply.costs
    assert cost.sensitivity == 3 * TOP and cost.mechanism == mechanisms.DISCRETE_LAPLACE
    assert cost.epsilon == dp.m.make_laplace(*I64, scale=cost.scale).map(3 * TOP) <= 1.0


# -- derived bounds of per-unit subqueries ------------------------------------------------------------


def _per_unit(kind: str, outer: AggregateKind, lo: float, hi: float) -> QueryPlan:
    from sandbox.protocol.messages import TableSource, UnitAggregate, UnitOutput

    src = UnitAggregate(TableSource("t", "t"), None, (UnitOutput("x", kind, Column("v", "t")),), "u")
    return QueryPlan("d", "t", (Aggregate(outer, Column("x", "u"), 1.0, lo, hi),), (), source=src)


def test_per_unit_sum_bounds_are_exact_and_never_rounded_in() -> None:
    """K * U of a per-unit SUM is the exact int; read as a float bound it is rounded outward, so an outer
    SUM over it is priced on a bound at or above every per-unit value (here 2^53 + 1: refused as beyond
    the exact range, where rounding to nearest gave 2^53 and under-priced it)."""
    from sandbox.errors import PlanRejectedError
    from sandbox.plans.bounds import expression_bounds
    from sandbox.plans.relation import plan_relation

    u = (2**53 + 1) // 3
    assert 3 * u == 2**53 + 1 and float(3 * u) == 2.0**53
    ds = _dataset(3, _int_col(0, u))
    plan = _per_unit("sum", AggregateKind.SUM, 0.0, 2.0**53)
    assert plan_relation(plan, ds).column("u.x") == ColumnInfo("x", "int64", "sensitive", lower=0, upper=3 * u)
    assert expression_bounds(Column("x", "u"), plan_relation(plan, ds)) is None
    with pytest.raises(PlanRejectedError, match="no finite bounds"):
        components(plan, ds)
    # a float column: K * 0.7 rounds down in floating point, the derived bound does not
    col = ColumnInfo("v", "float64", "sensitive", lower=-0.7, upper=0.7)
    x = plan_relation(plan, _dataset(3, col)).column("u.x")
    assert x is not None and x.upper == math.nextafter(3 * 0.7, math.inf) and x.lower == -x.upper
    assert Fraction(x.upper) >= 3 * Fraction(0.7)


def test_per_unit_float_means_are_clamped_to_their_derived_bound(tmp_path: Path) -> None:
    """DuckDB's mean of three 0.1s is 0.10000000000000002, above the bound [0, 0.1] the outer query is
    priced on: the compiler clamps per-unit AVG (and float SUM) outputs to their derived bounds."""
    from sandbox.engine.engine import sql_table_name
    from sandbox.plans.compile import compile_plan
    from sandbox.protocol.messages import Binary, Literal, TableSource, UnitAggregate, UnitOutput

    con = duckdb.connect()
    assert con.execute("SELECT avg(x) FROM (VALUES (0.1::DOUBLE), (0.1), (0.1)) t(x)").fetchone() == (
        0.10000000000000002,)
    con.execute(f"COPY (SELECT p AS pid, 0.1::DOUBLE AS v FROM range(4) a(p), range(3) b(i)) "
                f"TO '{tmp_path / 't.parquet'}' (FORMAT parquet)")
    (tmp_path / "catalog.toml").write_text("""
schema = "privacy_gateway.catalog.v1"
data_dir = "."
[datasets.d]
privacy_unit = "pid"
[datasets.d.tables.t]
file = "t.parquet"
max_rows_per_unit = 3
[datasets.d.tables.t.columns]
pid = { type = "int64", grade = "identifier" }
v   = { type = "float64", grade = "sensitive", lower = 0.0, upper = 0.1 }
""")
    engine = Engine(load_catalog(tmp_path / "catalog.toml"))
    info = engine.describe().dataset("d")
    assert info is not None
    src = UnitAggregate(TableSource("t", "t"), None, (UnitOutput("a", "avg", Column("v", "t")),), "u")
    above = QueryPlan("d", "t", (Aggregate(AggregateKind.COUNT),), (), source=src,
                      where=Binary(">", Column("a", "u"), Literal(0.1)))
    compiled = compile_plan(above, info.tables[0], sql_table=sql_table_name("d", "t"), unit="pid",
                            max_cells=10, dataset=info, sql_tables={"t": sql_table_name("d", "t")},
                            stored=True)
    assert engine.run_select(compiled.sql) == [(0,)]  # no unit's mean reads above 0.1
