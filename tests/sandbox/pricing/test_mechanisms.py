"""Pricing and noise: charged epsilon is exactly OpenDP's privacy map; bad inputs are not noised."""

from __future__ import annotations

import math

import pytest

from sandbox.errors import PlanRejectedError
from sandbox.pricing import mechanisms
from sandbox.protocol.messages import (
    Aggregate,
    AggregateKind,
    ColumnInfo,
    DatasetInfo,
    OutputColumn,
    QueryPlan,
    ReleaseCost,
    TableInfo,
)
from tests.helpers import make_agg

K = 3
DATASET = DatasetInfo(
    name="d",
    privacy_unit="pid",
    version="v",
    tables=(
        TableInfo(
            name="t",
            max_rows_per_unit=K,
            columns=(
                ColumnInfo("pid", "int64", "identifier"),
                ColumnInfo("income", "int64", "sensitive", lower=-10, upper=1000),
                ColumnInfo("score", "float64", "sensitive", lower=0.0, upper=2.5),
                ColumnInfo("region", "string", "public", domain=("a", "b")),
            ),
        ),
    ),
)


def agg(kind: AggregateKind, column: str | None = None, weight: float = 1.0) -> Aggregate:
    return make_agg(DATASET.tables[0], kind, column, weight)


def _plan(*aggs: Aggregate) -> QueryPlan:
    return QueryPlan("d", "t", aggs, (OutputColumn("x", aggregate_index=0),))


def _d_in(cost: ReleaseCost) -> int | float:
    integer = cost.mechanism == mechanisms.DISCRETE_LAPLACE
    return int(cost.sensitivity) if integer else float(cost.sensitivity)


def _map(cost: ReleaseCost) -> float:
    integer = cost.mechanism == mechanisms.DISCRETE_LAPLACE
    meas = mechanisms.make_measurement(integer, cost.scale)
    return float(meas.map(_d_in(cost)))  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("epsilon", [0.01, 0.1, 1.0, 3.7])
@pytest.mark.parametrize(
    ("agg", "mechanism", "sensitivity"),
    [
        (Aggregate(AggregateKind.COUNT), mechanisms.DISCRETE_LAPLACE, K),
        (agg(AggregateKind.COUNT_COLUMN, "region"), mechanisms.DISCRETE_LAPLACE, K),
        (agg(AggregateKind.SUM, "income"), mechanisms.DISCRETE_LAPLACE, K * 1000),
        (agg(AggregateKind.SUM, "score"), mechanisms.LAPLACE, K * 2.5),
    ],
    ids=["count", "count_column", "int_sum", "float_sum"],
)
def test_cost_is_exactly_the_opendp_map(
    agg: Aggregate, mechanism: str, sensitivity: float, epsilon: float
) -> None:
    """Each charged epsilon equals make_measurement(...).map(d_in) and fits the request."""
    (cost,) = mechanisms.price(_plan(agg), DATASET, epsilon)
    assert cost.mechanism == mechanism
    assert cost.sensitivity == sensitivity
    assert cost.epsilon == _map(cost)
    assert cost.epsilon <= epsilon
    assert cost.epsilon > epsilon * (1 - 1e-6)  # calibrated tightly, not wastefully


@pytest.mark.parametrize("column", ["income", "score"])
def test_avg_is_two_releases_within_epsilon(column: str) -> None:
    """AVG costs a sum and a count release whose epsilons sum to at most the request."""
    costs = mechanisms.price(_plan(agg(AggregateKind.AVG, column)), DATASET, 1.0)
    assert [c.component for c in costs] == ["sum", "count"]
    assert all(c.epsilon == _map(c) for c in costs)
    assert mechanisms.total_epsilon(costs) <= 1.0
    assert costs[0].epsilon == pytest.approx(0.5, rel=1e-6)


def test_weights_split_epsilon() -> None:
    """Aggregate weights split the query's epsilon proportionally."""
    plan = _plan(
        agg(AggregateKind.COUNT, weight=1.0), agg(AggregateKind.SUM, "income", weight=3)
    )
    costs = mechanisms.price(plan, DATASET, 2.0)
    assert costs[0].epsilon == pytest.approx(0.5, rel=1e-6)
    assert costs[1].epsilon == pytest.approx(1.5, rel=1e-6)
    assert mechanisms.total_epsilon(costs) <= 2.0
    assert all(c.epsilon == _map(c) for c in costs)


@pytest.mark.parametrize("epsilon", [0.0, -1.0, math.nan, math.inf])
def test_bad_epsilon_refused(epsilon: float) -> None:
    """Zero, negative, NaN and infinite epsilon are refused before anything runs."""
    with pytest.raises(PlanRejectedError):
        mechanisms.price(_plan(Aggregate(AggregateKind.COUNT)), DATASET, epsilon)


def test_unknown_or_identifier_columns_refused() -> None:
    """Pricing refuses unknown tables/columns, identifiers and unbounded sums."""
    for bad in (
        agg(AggregateKind.SUM, "nope"),
        agg(AggregateKind.SUM, "pid"),
        agg(AggregateKind.SUM, "region"),
    ):
        with pytest.raises(PlanRejectedError):
            mechanisms.price(_plan(bad), DATASET, 1.0)
    with pytest.raises(PlanRejectedError, match="unknown table"):
        mechanisms.price(
            QueryPlan("d", "zz", (Aggregate(AggregateKind.COUNT),), ()), DATASET, 1.0
        )


def _cost(integer: bool) -> ReleaseCost:
    (c,) = mechanisms.price(
        _plan(agg(AggregateKind.SUM, "income" if integer else "score")), DATASET, 1.0
    )
    return c


@pytest.mark.parametrize(
    ("integer", "bad"),
    [
        (False, math.nan),
        (False, math.inf),
        (False, -math.inf),
        (False, 1e17),
        (True, math.nan),
        (True, math.inf),
        (True, 2**60),
        (True, 1.5),
    ],
)
def test_release_vector_refuses_bad_inputs(integer: bool, bad: float) -> None:
    """NaN, infinities, fractional integers and values too large for the noise are refused."""
    with pytest.raises(ValueError):
        mechanisms.release_vector(_cost(integer), [1, bad, 2])


def test_release_vector_adds_noise_of_right_type() -> None:
    """Integer paths return ints, float paths floats, one value per input cell."""
    out = mechanisms.release_vector(_cost(True), [10, 20, 30])
    assert len(out) == 3 and all(type(v) is int for v in out)
    out = mechanisms.release_vector(_cost(False), [1.0, 2.0])
    assert len(out) == 2 and all(type(v) is float for v in out)


def test_noisy_count_is_nonnegative_with_honest_interval() -> None:
    """Counts are clipped at zero and their interval stays within [0, inf)."""
    (cost,) = mechanisms.price(_plan(Aggregate(AggregateKind.COUNT)), DATASET, 1.0)
    v = mechanisms.noisy_count_or_sum(cost, -4, nonnegative=True)
    assert v.value == 0 and v.ci_lower == 0.0 and v.ci_upper >= 0.0
    assert v.stddev > 0 and v.scale == cost.scale


def test_noisy_average_within_bounds() -> None:
    """The released average and its interval stay inside the column bounds."""
    s, c = mechanisms.price(_plan(agg(AggregateKind.AVG, "score")), DATASET, 1.0)
    v = mechanisms.noisy_average(s, c, noisy_sum=1e6, noisy_count=3.0, lower=0.0, upper=2.5)
    assert 0.0 <= v.ci_lower <= v.value <= v.ci_upper <= 2.5
    v = mechanisms.noisy_average(s, c, noisy_sum=5.0, noisy_count=-2.0, lower=0.0, upper=2.5)
    assert (v.ci_lower, v.ci_upper) == (0.0, 2.5)


def test_smallest_true_finds_the_same_t_as_a_bisection_from_any_guess() -> None:
    """The galloping search returns the bisection's answer whatever the guess (only its cost differs)."""
    from sandbox.pricing.mechanisms import smallest_true

    for answer in (0, 1, 2, 7, 100, 1023, 1024, 5000):
        for guess in (-5, 0, 1, answer - 3, answer, answer + 1, answer + 17, 10**6, 2**40):
            assert smallest_true(lambda t, a=answer: t >= a, 0, 2**40, guess) == answer  # type: ignore[misc]
        calls: list[int] = []
        assert smallest_true(lambda t, a=answer, c=calls: c.append(t) is None and t >= a,  # type: ignore[misc]
                             0, 2**40, answer + 2) == answer
        assert len(calls) <= 5  # a near guess costs a handful of maps, not the 40 of a full bisection
    assert smallest_true(lambda t: True, 5, 9, 7) == 5


@pytest.mark.parametrize("k,epsilon,delta", [(1, 1.0, 1e-6), (12, 0.3, 1e-9), (3, 5.0, 1e-3), (1, 0.05, 1e-12)])
def test_threshold_calibration_is_the_smallest_threshold_opendp_allows(k: int, epsilon: float, delta: float) -> None:
    """The charged threshold t is the smallest whose OpenDP map has delta <= the request's (checked at t and
    t - 1); the mechanism runs at t + 1 (THRESHOLD_MARGIN: OpenDP's map at t bounds the mechanism at t + 1)."""
    from sandbox.pricing.mechanisms import THRESHOLD_MARGIN, calibrate_threshold, make_threshold

    scale, run, e, d = calibrate_threshold(k, epsilon, delta)
    t = run - THRESHOLD_MARGIN
    assert THRESHOLD_MARGIN == 1
    assert e <= epsilon and d <= delta
    assert (float(e), float(d)) == tuple(float(x) for x in make_threshold(scale, t).map((k, k, k)))
    if t > k:
        assert float(make_threshold(scale, t - 1).map((k, k, k))[1]) > delta
