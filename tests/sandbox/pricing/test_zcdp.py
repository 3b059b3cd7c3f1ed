"""zCDP pricing: every charged rho is exactly the OpenDP privacy map of the measurement that releases it."""

from __future__ import annotations

import math

import opendp.prelude as dp
import pytest

from sandbox.errors import PlanRejectedError
from sandbox.pricing import mechanisms, zcdp
from sandbox.protocol.messages import (
    Aggregate,
    AggregateKind,
    Column,
    GroupKey,
    OutputColumn,
    QueryPlan,
    ReleaseCost,
)
from tests.sandbox.pricing.test_mechanisms import DATASET, K, agg


def _plan(*aggs: Aggregate, group_by: tuple[GroupKey, ...] = ()) -> QueryPlan:
    outputs = tuple(OutputColumn(f"x{i}", aggregate_index=i) for i in range(len(aggs)))
    return QueryPlan("d", "t", aggs, outputs, group_by=group_by)


def _gaussian_map(cost: ReleaseCost) -> float:
    integer = cost.mechanism == mechanisms.DISCRETE_GAUSSIAN
    meas = mechanisms.make_measurement(integer, cost.scale, gaussian=True)
    d_in = int(cost.sensitivity) if integer else float(cost.sensitivity)
    return float(meas.map(d_in))  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("rho", [0.001, 0.05, 0.5, 2.0])
@pytest.mark.parametrize(
    ("aggregate", "mechanism", "sensitivity"),
    [
        (Aggregate(AggregateKind.COUNT), mechanisms.DISCRETE_GAUSSIAN, K),
        (agg(AggregateKind.COUNT_COLUMN, "region"), mechanisms.DISCRETE_GAUSSIAN, K),
        (agg(AggregateKind.SUM, "income"), mechanisms.DISCRETE_GAUSSIAN, K * 1000),
        (agg(AggregateKind.SUM, "score"), mechanisms.GAUSSIAN, K * 2.5),
    ],
    ids=["count", "count_column", "int_sum", "float_sum"],
)
def test_rho_is_exactly_the_opendp_map(aggregate: Aggregate, mechanism: str, sensitivity: float, rho: float) -> None:
    (cost,) = zcdp.price(_plan(aggregate), DATASET, rho)
    assert cost.mechanism == mechanism
    assert cost.sensitivity == sensitivity
    assert cost.epsilon == 0.0 and cost.delta == 0.0
    assert cost.rho == _gaussian_map(cost)
    assert cost.rho <= rho
    assert cost.rho == pytest.approx(rho, rel=1e-9)  # calibrated to the share, not far below it
    # and it is d^2 / (2 scale^2), the Gaussian's zCDP bound
    assert cost.rho == pytest.approx(sensitivity**2 / (2 * cost.scale**2), rel=1e-12)


@pytest.mark.parametrize("kind", [AggregateKind.AVG, AggregateKind.VAR_SAMP, AggregateKind.STDDEV_POP])
def test_derived_aggregates_split_rho(kind: AggregateKind) -> None:
    costs = zcdp.price(_plan(agg(kind, "income")), DATASET, 0.3)
    parts = 2 if kind is AggregateKind.AVG else 3
    assert len(costs) == parts
    for c in costs:
        assert c.rho == _gaussian_map(c)
        assert c.rho == pytest.approx(0.3 / parts, rel=1e-9)
    assert zcdp.total_rho(costs) <= 0.3


def test_quantile_rho_is_the_zcdp_noisy_max_map() -> None:
    # two releases (sandbox.pricing.quantiles): the point (zCDP noisy max) and its interval's ladder counts
    # (discrete Gaussian), half of the rho each by default
    cost, interval = zcdp.price(_plan(agg(AggregateKind.QUANTILE, "income")), DATASET, 0.2)
    assert cost.mechanism == mechanisms.NOISY_MAX_ZCDP
    assert (interval.component, interval.mechanism) == ("interval", mechanisms.DISCRETE_GAUSSIAN)
    assert interval.rho == _gaussian_map(interval) and interval.sensitivity == K
    assert interval.rho == pytest.approx(0.1, rel=1e-9)
    c = mechanisms.components(_plan(agg(AggregateKind.QUANTILE, "income")), DATASET)[0]
    chain = zcdp.quantile_measurement(c.candidates, c.alpha, cost.scale)
    assert chain.output_measure == dp.zero_concentrated_divergence()
    assert cost.rho == float(chain.map(K))  # type: ignore[no-untyped-call]
    assert cost.rho <= 0.1 and zcdp.total_rho((cost, interval)) <= 0.2
    # OpenDP's zCDP noisy max is (d/scale)^2/8: a quarter of the pure chain converted with pureDP->zCDP
    pure = mechanisms.quantile_measurement(c.candidates, c.alpha, cost.scale)
    converted = float(dp.c.make_pureDP_to_zCDP(pure).map(K))  # type: ignore[no-untyped-call]
    assert cost.rho == pytest.approx(converted / 4, rel=1e-9)


def test_weights_split_rho() -> None:
    plan = _plan(Aggregate(AggregateKind.COUNT, weight=3.0), agg(AggregateKind.SUM, "income", weight=1.0))
    count, total = zcdp.price(plan, DATASET, 0.4)
    assert count.rho == pytest.approx(0.3, rel=1e-9)
    assert total.rho == pytest.approx(0.1, rel=1e-9)


def test_partition_selection_is_gaussian_threshold_with_its_map() -> None:
    """The COUNT itself is released by OpenDP's Gaussian threshold (the keys it keeps and their noisy
    counts), at the whole rho: its (rho, delta) is exactly that measurement's map at (l0, l2, linf) =
    (K, K, K), and the threshold is the smallest whose delta fits."""
    plan = _plan(Aggregate(AggregateKind.COUNT), group_by=(GroupKey("income", Column("income"), None),))
    costs = zcdp.price(plan, DATASET, 0.5, 1e-6)
    (select,) = costs
    assert (select.aggregate_index, select.component) == (0, "count")
    assert select.mechanism == mechanisms.GAUSSIAN_THRESHOLD
    # charged: OpenDP's map one below the threshold it runs at (THRESHOLD_MARGIN)
    meas = zcdp.gaussian_threshold(select.scale, select.threshold - 1)
    assert meas.output_measure == dp.approximate(dp.zero_concentrated_divergence())
    r, d = meas.map((K, K, K))  # type: ignore[no-untyped-call]
    assert (select.rho, select.delta) == (float(r), float(d))
    assert select.delta <= 1e-6
    assert select.rho == pytest.approx(0.5, rel=1e-9)
    # the threshold is the smallest that fits the delta
    _, d_below = zcdp.gaussian_threshold(select.scale, select.threshold - 2).map((K, K, K))  # type: ignore[no-untyped-call]
    assert float(d_below) > 1e-6
    assert zcdp.total_rho(costs) <= 0.5
    with pytest.raises(PlanRejectedError, match="delta"):
        zcdp.price(plan, DATASET, 0.5, 0.0)


def test_separate_gaussian_selection_without_a_count() -> None:
    """A SUM alone has no count to threshold: a separate Gaussian threshold on row counts (index -1) takes
    its share, and its map at (K, K, K) is what is charged."""
    plan = _plan(agg(AggregateKind.SUM, "income"), group_by=(GroupKey("income", Column("income"), None),))
    select, total = zcdp.price(plan, DATASET, 0.5, 1e-6)
    assert (select.aggregate_index, select.component, select.mechanism) == (-1, "select", "gaussian_threshold")
    r, d = zcdp.gaussian_threshold(select.scale, select.threshold - 1).map((K, K, K))  # type: ignore[no-untyped-call]
    assert (select.rho, select.delta) == (float(r), float(d))
    assert select.rho == pytest.approx(0.25, rel=1e-9) and total.rho == pytest.approx(0.25, rel=1e-9)


@pytest.mark.parametrize("rho", [0.0, -1.0, math.nan, math.inf])
def test_bad_rho_refused(rho: float) -> None:
    with pytest.raises(PlanRejectedError):
        zcdp.price(_plan(Aggregate(AggregateKind.COUNT)), DATASET, rho)


@pytest.mark.parametrize(("rho", "delta"), [(0.5, 1e-6), (0.0125, 1e-5), (3.0, 1e-9)])
def test_conversion_is_opendps(rho: float, delta: float) -> None:
    """rho_to_epsilon is OpenDP's zCDP->approxDP + fix_delta on a Gaussian whose map is rho."""
    space = dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float)
    g = dp.m.make_gaussian(*space, scale=1.0)
    expected, d = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(g), delta).map(math.sqrt(2 * rho))
    assert d == delta
    assert zcdp.rho_to_epsilon(rho, delta) == pytest.approx(expected, rel=1e-12)
    # the classic bound rho + 2 sqrt(rho ln(1/delta)) is never beaten by more than OpenDP's tighter one
    assert zcdp.rho_to_epsilon(rho, delta) <= rho + 2 * math.sqrt(rho * math.log(1 / delta)) + 1e-12
    assert zcdp.rho_to_epsilon(0.0, delta) == 0.0
    assert zcdp.rho_to_epsilon(rho, 0.0) == math.inf
    back = zcdp.epsilon_to_rho(zcdp.rho_to_epsilon(rho, delta), delta)
    assert back == pytest.approx(rho, rel=1e-9)


def test_approximate_total_matches_fix_delta_of_gaussian_threshold() -> None:
    """to_approx_dp of (rho, delta_s) equals make_fix_delta on OpenDP's approximate-zCDP measurement."""
    meas = zcdp.gaussian_threshold(2.0, 12)
    rho, ds = meas.map((3, 3, 3))  # type: ignore[no-untyped-call]
    eps, delta = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(meas), 1e-3).map((3, 3, 3))  # type: ignore[no-untyped-call]
    mine = zcdp.to_approx_dp(float(rho), float(ds), 1e-3)
    assert mine[1] == delta
    assert mine[0] == pytest.approx(eps, rel=1e-9)


def test_release_vector_uses_the_gaussian() -> None:
    (cost,) = zcdp.price(_plan(Aggregate(AggregateKind.COUNT)), DATASET, 0.5)
    out = mechanisms.release_vector(cost, [10, 20, 30])
    assert all(isinstance(v, int) for v in out)
    (fcost,) = zcdp.price(_plan(agg(AggregateKind.SUM, "score")), DATASET, 0.5)
    assert all(isinstance(v, float) for v in mechanisms.release_vector(fcost, [1.0, 2.0]))
    # intervals come from OpenDP's Gaussian accuracy functions
    assert mechanisms.half_width(cost) == float(dp.discrete_gaussian_scale_to_accuracy(cost.scale, 0.05))
    assert mechanisms.half_width(fcost) == float(dp.gaussian_scale_to_accuracy(fcost.scale, 0.05))


def test_accuracy_inverse_is_opendps() -> None:
    s = zcdp.accuracy_to_scale(True, 25.0)
    # OpenDP's inverse at 24: its forward accuracy (the interval an answer carries) is then exactly 25
    assert s == float(dp.accuracy_to_discrete_gaussian_scale(24.0, 0.05))
    assert float(dp.discrete_gaussian_scale_to_accuracy(s, 0.05)) == 25.0
    f = zcdp.accuracy_to_scale(False, 25.0)
    assert f == float(dp.accuracy_to_gaussian_scale(25.0, 0.05))
    assert float(dp.gaussian_scale_to_accuracy(f, 0.05)) == pytest.approx(25.0, rel=1e-9)


@pytest.mark.parametrize("scale", [2e4, 3.3e5, 1.7e6])
def test_large_scale_discrete_accuracy_bound_is_never_tighter_than_opendps(scale: float) -> None:
    """Above 1e4 the interval uses ceil(continuous accuracy) + 1 (fast); it is at least OpenDP's exact
    discrete accuracy, so it covers at least as often."""
    exact = float(dp.discrete_gaussian_scale_to_accuracy(scale, 0.05))
    assert exact <= mechanisms.discrete_gaussian_accuracy(scale, 0.05) <= exact + 2
    s = zcdp.accuracy_to_scale(True, 5e5)
    assert mechanisms.discrete_gaussian_accuracy(s, 0.05) <= 5e5


@pytest.mark.parametrize(("cells", "l2"), [(1, 1), (2, 2), (4, 2), (5, 3), (12, 4)])
def test_count_distinct_unit_is_calibrated_on_its_l2_bound(cells: int, l2: int) -> None:
    """COUNT(DISTINCT unit) grouped over m cells: one unit adds at most 1 to each of min(K, m) cells, so
    the Gaussian is calibrated on ceil(sqrt(min(K, m))), not on the L1 bound min(K, m); the charged rho
    is OpenDP's map at that d_in (and the pure-DP Laplace keeps the L1 bound)."""
    from sandbox.protocol.messages import ColumnInfo, DatasetInfo, TableInfo

    domain = tuple(f"v{i}" for i in range(cells))
    ds = DatasetInfo(name="d", privacy_unit="pid", version="v", tables=(TableInfo(
        name="t", max_rows_per_unit=12,
        columns=(ColumnInfo("pid", "int64", "identifier"), ColumnInfo("g", "string", "public", domain=domain))),))
    plan = _plan(Aggregate(AggregateKind.COUNT_DISTINCT_UNIT), group_by=(GroupKey("g", Column("g"), domain),))
    (cost,) = zcdp.price(plan, ds, 0.1)
    assert cost.sensitivity == l2
    assert cost.rho == _gaussian_map(cost) <= 0.1
    assert cost.rho == pytest.approx(l2**2 / (2 * cost.scale**2), rel=1e-12)
    # the vector of one unit's changes (1 in each of min(K, m) cells) is within that L2 distance
    assert math.sqrt(min(12, cells)) <= l2
    (pure,) = mechanisms.price(plan, ds, 1.0)
    assert pure.sensitivity == min(12, cells)
