"""Selecting private group keys on the plan's own count: exact privacy maps and the share arithmetic.

Every charged (epsilon, delta) (or (rho, delta)) is the OpenDP map of the measurement the sandbox runs, at
the d_in the test derives independently: per-key row counts move by at most (l0, l1, linf) = (R, K, K),
per-key counts of units by (R, R, 1), R the cells one unit reaches.
"""

from __future__ import annotations

import math

import pytest

from sandbox.plans.selection import boost, count_weight, key_count
from sandbox.pricing import mechanisms, zcdp
from sandbox.protocol.messages import (
    Aggregate,
    AggregateKind,
    Column,
    ColumnInfo,
    DatasetInfo,
    GroupKey,
    OutputColumn,
    QueryPlan,
    TableInfo,
    TableSource,
    UnitJoin,
)
from tests.helpers import make_agg

K = 3
TABLE = TableInfo(
    name="t",
    max_rows_per_unit=K,
    columns=(
        ColumnInfo("pid", "int64", "identifier"),
        ColumnInfo("income", "int64", "sensitive", lower=-10, upper=1000),
        ColumnInfo("score", "float64", "sensitive", lower=0.0, upper=2.5),
        ColumnInfo("city", "string", "public"),  # no domain: keys selected privately
        ColumnInfo("region", "string", "public", domain=("a", "b")),
    ),
)
PEOPLE = TableInfo(
    name="people",
    max_rows_per_unit=1,
    columns=(ColumnInfo("pid", "int64", "identifier"), ColumnInfo("town", "string", "public")),
)
DATASET = DatasetInfo(name="d", privacy_unit="pid", version="v", tables=(TABLE, PEOPLE))
CITY = GroupKey("city", Column("city"), None)
REGION = GroupKey("region", Column("region"), ("a", "b"))
EPS, DELTA = 1.0, 1e-6


def agg(kind: AggregateKind, column: str | None = None, weight: float = 1.0) -> Aggregate:
    return make_agg(TABLE, kind, column, weight)


def _plan(*aggs: Aggregate, key: GroupKey = CITY, selection_weight: float = 1.0) -> QueryPlan:
    outputs = tuple(OutputColumn(f"x{i}", aggregate_index=i) for i in range(len(aggs)))
    return QueryPlan("d", "t", aggs, outputs, group_by=(key,), selection_weight=selection_weight)


COUNT = Aggregate(AggregateKind.COUNT)
DISTINCT = Aggregate(AggregateKind.COUNT_DISTINCT_UNIT)


@pytest.mark.parametrize(("aggs", "chosen"), [
    ((COUNT,), 0),
    ((agg(AggregateKind.SUM, "income"), COUNT), 1),
    ((agg(AggregateKind.AVG, "income"),), 0),
    ((agg(AggregateKind.VAR_POP, "income"),), 0),
    ((agg(AggregateKind.COUNT_COLUMN, "income"), COUNT), 1),  # equal weight: COUNT(*) before COUNT(expr)
    ((COUNT, DISTINCT), 1),  # equal weight: COUNT(DISTINCT unit) first (linf = 1)
    ((agg(AggregateKind.AVG, "income"), agg(AggregateKind.COUNT_COLUMN, "income")), 1),  # 1 > 1/2
    ((agg(AggregateKind.AVG, "income", weight=4.0), COUNT), 0),  # 2 > 1
    ((agg(AggregateKind.SUM, "income"),), None),
    ((agg(AggregateKind.QUANTILE, "income"), agg(AggregateKind.SUM, "score")), None),
])
def test_the_count_that_selects_the_keys(aggs: tuple[Aggregate, ...], chosen: int | None) -> None:
    assert key_count(_plan(*aggs)) == chosen
    assert key_count(_plan(*aggs, key=REGION)) is None  # public domain: nothing to select


PLANS = [
    (COUNT,),
    (DISTINCT,),
    (agg(AggregateKind.AVG, "income"),),
    (agg(AggregateKind.AVG, "score"), agg(AggregateKind.SUM, "income")),
    (agg(AggregateKind.VAR_SAMP, "score"),),
    (COUNT, agg(AggregateKind.SUM, "income", weight=9.0)),
    (agg(AggregateKind.COUNT_COLUMN, "income", weight=0.1), agg(AggregateKind.AVG, "income")),
    (agg(AggregateKind.SUM, "income"),),
    (agg(AggregateKind.QUANTILE, "income"), agg(AggregateKind.SUM, "score")),
]


@pytest.mark.parametrize("aggs", PLANS, ids=[str(i) for i in range(len(PLANS))])
@pytest.mark.parametrize("w_s", [1.0, 3.0, 0.2])
def test_selecting_on_a_count_is_never_worse_than_a_separate_selection(aggs: tuple[Aggregate, ...],
                                                                      w_s: float) -> None:
    """With selection weight w_s, a separate selection would get w_s / (W + w_s) and every component
    its weight / (W + w_s). On a count, the count's share is at least the selection's and every other
    share is at least the separate one; the shares add up to 1."""
    plan = _plan(*aggs, selection_weight=w_s)
    comps = mechanisms.components(plan, DATASET)
    assert math.fsum(c.share for c in comps) == pytest.approx(1.0, rel=1e-12)
    total = math.fsum(a.weight for a in aggs)
    chosen = key_count(plan)
    (keyed,) = [c for c in comps if c.keys is not None]
    assert keyed.share >= w_s / (total + w_s) * (1 - 1e-12)
    if chosen is None:
        assert (keyed.aggregate_index, keyed.component) == (-1, "select")
        return
    assert (keyed.aggregate_index, keyed.component) == (chosen, "count")
    w_c = count_weight(aggs[chosen])
    assert w_c is not None
    assert keyed.share >= w_c / (total + w_s) * (1 - 1e-12)
    x = boost(plan, chosen)
    assert 0 <= x <= w_s
    for c in comps:
        if c is keyed:
            continue
        separate = c.share * (total + x) / (total + w_s)  # the same weight over the separate total
        assert c.share >= separate * (1 - 1e-12)


@pytest.mark.parametrize("aggs", PLANS, ids=[str(i) for i in range(len(PLANS))])
def test_pure_dp_charge_is_the_threshold_map(aggs: tuple[Aggregate, ...]) -> None:
    plan = _plan(*aggs)
    costs = mechanisms.price(plan, DATASET, EPS, DELTA)
    assert mechanisms.total_epsilon(costs) <= EPS
    assert mechanisms.total_epsilon(costs) == pytest.approx(EPS, rel=1e-9)
    (sel,) = [c for c in costs if c.mechanism in mechanisms.THRESHOLD_MECHANISMS]
    assert sel.mechanism == mechanisms.LAPLACE_THRESHOLD
    distinct = sel.aggregate_index >= 0 and aggs[sel.aggregate_index].kind is AggregateKind.COUNT_DISTINCT_UNIT
    # one unit's K rows can fall in K cities: (K, K, K) on row counts, (K, K, 1) on counts of units
    d_in = (K, K, 1) if distinct else (K, K, K)
    # charged: OpenDP's map one below the threshold the mechanism runs at (THRESHOLD_MARGIN)
    e, d = mechanisms.make_threshold(sel.scale, sel.threshold - 1).map(d_in)  # type: ignore[no-untyped-call]
    assert (sel.epsilon, sel.delta) == (float(e), float(d))
    assert sel.delta <= DELTA
    assert float(mechanisms.make_threshold(sel.scale, sel.threshold - 2).map(d_in)[1]) > DELTA  # type: ignore[no-untyped-call]
    assert mechanisms.total_delta(costs) == sel.delta
    # the other components are exactly as without private keys, at their shares
    comps = {(c.aggregate_index, c.component): c for c in mechanisms.components(plan, DATASET)}
    for c in costs:
        if c is sel or c.component == "quantile":
            continue
        assert c.epsilon == float(mechanisms.make_measurement(
            c.mechanism == mechanisms.DISCRETE_LAPLACE, c.scale).map(mechanisms.d_in(  # type: ignore[no-untyped-call]
                c.mechanism == mechanisms.DISCRETE_LAPLACE, comps[(c.aggregate_index, c.component)].sensitivity)))


@pytest.mark.parametrize("aggs", PLANS, ids=[str(i) for i in range(len(PLANS))])
def test_zcdp_charge_is_the_gaussian_threshold_map(aggs: tuple[Aggregate, ...]) -> None:
    rho = 0.3
    costs = zcdp.price(_plan(*aggs), DATASET, rho, DELTA)
    assert zcdp.total_rho(costs) <= rho and zcdp.total_rho(costs) == pytest.approx(rho, rel=1e-9)
    (sel,) = [c for c in costs if c.mechanism in mechanisms.THRESHOLD_MECHANISMS]
    assert sel.mechanism == mechanisms.GAUSSIAN_THRESHOLD
    distinct = sel.aggregate_index >= 0 and aggs[sel.aggregate_index].kind is AggregateKind.COUNT_DISTINCT_UNIT
    d_in = (K, math.ceil(math.sqrt(K)), 1) if distinct else (K, K, K)  # (l0, l2, linf)
    r, d = zcdp.gaussian_threshold(sel.scale, sel.threshold - 1).map(d_in)  # type: ignore[no-untyped-call]
    assert (sel.rho, sel.delta) == (float(r), float(d))
    assert sel.delta <= DELTA and sel.epsilon == 0.0
    assert float(zcdp.gaussian_threshold(sel.scale, sel.threshold - 2).map(d_in)[1]) > DELTA  # type: ignore[no-untyped-call]


@pytest.mark.parametrize("kind", [AggregateKind.COUNT, AggregateKind.COUNT_DISTINCT_UNIT])
def test_a_private_key_count_has_the_public_key_counts_noise(kind: AggregateKind) -> None:
    """The point of selecting on the count: its noise scale is the public-key count's at the same loss."""
    private = mechanisms.price(_plan(Aggregate(kind)), DATASET, EPS, DELTA)
    public = mechanisms.price(_plan(Aggregate(kind), key=REGION), DATASET, EPS)
    assert len(private) == len(public) == 1
    if kind is AggregateKind.COUNT:  # a unit moves a public-domain count vector by K too
        assert private[0].scale == public[0].scale
    else:  # COUNT(DISTINCT unit): R = K over the cities, min(K, 2) = 2 over the two regions
        assert private[0].scale == pytest.approx(public[0].scale * K / 2)
    z_private = zcdp.price(_plan(COUNT), DATASET, 0.3, DELTA)
    z_public = zcdp.price(_plan(COUNT, key=REGION), DATASET, 0.3)
    assert z_private[0].scale == pytest.approx(z_public[0].scale, rel=1e-12)


def test_a_key_from_the_one_row_table_of_a_join_reaches_one_cell() -> None:
    """people (1 row per unit) JOIN t (K = 3): grouped by people.town, one unit's 3 rows are in ONE
    town: row counts move by (1, 3, 3), counts of units by (1, 1, 1)."""
    source = UnitJoin(TableSource("people", "p"), TableSource("t", "s"))
    town = GroupKey("town", Column("town", "p"), None)
    for aggregate, d_in in ((COUNT, (1, 3, 3)), (DISTINCT, (1, 1, 1))):
        plan = QueryPlan("d", "people", (aggregate,), (OutputColumn("n", aggregate_index=0),), group_by=(town,),
                         source=source)
        (cost,) = mechanisms.price(plan, DATASET, EPS, DELTA)
        assert cost.mechanism == mechanisms.LAPLACE_THRESHOLD
        e, d = mechanisms.make_threshold(cost.scale, cost.threshold - 1).map(d_in)  # type: ignore[no-untyped-call]
        assert (cost.epsilon, cost.delta) == (float(e), float(d))
        assert cost.sensitivity == (3 if aggregate is COUNT else 1)


def test_opendp_threshold_maps_are_one_integer_short() -> None:
    """Pins the OpenDP behaviour THRESHOLD_MARGIN works around (opendp/opendp#2922): a key only one
    neighbour has, with count linf, passes threshold T when its noise Z >= T - linf, but the map's delta
    is the tail P(Z > T - linf). For the discrete Laplace at scale s, P(Z > t) = e^(-(t+1)/s) / (1 + e^(-1/s))
    (OpenDP's own formula, `conservative_discrete_laplacian_tail_to_alpha`). If OpenDP starts charging
    P(Z >= T - linf), this test fails: then THRESHOLD_MARGIN must become 0."""
    for scale, t, linf in ((1.0, 5, 1), (2.0, 30, 3), (0.5, 4, 2)):
        _, d = mechanisms.make_threshold(scale, t).map((1, linf, linf))  # type: ignore[no-untyped-call]
        strictly_above = math.exp(-(t - linf + 1) / scale) / (1 + math.exp(-1 / scale))
        at_or_above = math.exp(-(t - linf) / scale) / (1 + math.exp(-1 / scale))
        assert float(d) == pytest.approx(strictly_above, rel=1e-9)
        assert float(d) < at_or_above
