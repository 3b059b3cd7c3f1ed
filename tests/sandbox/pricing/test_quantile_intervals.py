"""Quantile intervals: the ladder, the certification rule, its tail margin, and exact OpenDP accounting."""

from __future__ import annotations

import math
import random

import numpy as np
import opendp.prelude as dp
import pytest

from sandbox.errors import PlanRejectedError
from sandbox.plans.compile import compile_plan, quantile_candidates
from sandbox.pricing import mechanisms, quantiles
from sandbox.protocol.messages import (
    Aggregate,
    AggregateKind,
    Column,
    ColumnInfo,
    DatasetInfo,
    GroupKey,
    OutputColumn,
    QueryPlan,
    ReleaseCost,
    TableInfo,
    plan_from_json,
    plan_to_json,
)

K = 2
TABLE = TableInfo(
    "t",
    (
        ColumnInfo("pid", "int64", "identifier"),
        ColumnInfo("age", "int64", "public", lower=0, upper=100),
        ColumnInfo("x", "float64", "sensitive", lower=-2.0, upper=4.0),
        ColumnInfo("s", "string", "public", domain=("a", "b")),
    ),
    max_rows_per_unit=K,
)
DATASET = DatasetInfo("d", "pid", (TABLE,), version="v")


def _median(arg: str, lo: float, hi: float, share: float | None = None, alpha: float = 0.5) -> Aggregate:
    return Aggregate(AggregateKind.QUANTILE, Column(arg), 1.0, lo, hi, alpha, share)


def _plan(*aggs: Aggregate, grouped: bool = False) -> QueryPlan:
    keys = (GroupKey("s", Column("s"), ("a", "b")),) if grouped else ()
    outputs = tuple(OutputColumn(f"v{i}", aggregate_index=i) for i in range(len(aggs)))
    return QueryPlan("d", "t", aggs, outputs, None, keys)


def _snapped_values(counts: list[int], cands: tuple[float, ...]) -> list[float]:
    return [cands[i] for i, c in enumerate(counts) for _ in range(c)]


def _order_stat_bounds(values: list[float], alpha: float) -> tuple[float, float]:
    """[x_(r_lo), x_(r_hi)]: every usual definition of the alpha-quantile lies in it."""
    s = sorted(values)
    h = alpha * (len(s) - 1)
    return s[math.floor(h)], s[math.ceil(h)]


# --- the ladder -------------------------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 3, 101, 1024])
def test_ladder_is_sorted_inside_the_grid_and_fine_near_the_point(m: int) -> None:
    """Boundaries are distinct, in 1..m-1, at most MAX_LADDER_CELLS - 1, and every step near the point."""
    for p in {0, m // 3, m // 2, m - 1}:
        b = quantiles.ladder(p, m)
        assert list(b) == sorted(set(b)) and all(1 <= x <= m - 1 for x in b)
        assert len(b) + 1 <= quantiles.MAX_LADDER_CELLS
        for x in range(p - 2, p + 4):
            if 1 <= x <= m - 1:
                assert x in b


def test_ladder_counts_are_opendps_binned_counts() -> None:
    """The engine's ladder cell counts equal OpenDP's make_find_bin >> make_count_by_categories on the
    snapped values (the transformation the charge is computed for)."""
    rng = random.Random(3)
    cands = quantile_candidates(-2.0, 4.0, False)
    for _ in range(5):
        counts = [rng.choice([0, 0, 1, 3, 40]) for _ in cands]
        p = rng.randrange(len(cands))
        b = quantiles.ladder(p, len(cands))
        edges = [cands[i] for i in b]
        dom = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance()
        bins = dp.t.make_find_bin(*dom, edges=edges)
        cbc = dp.t.make_count_by_categories(
            bins.output_domain, bins.output_metric, categories=list(range(len(edges) + 1)),
            null_category=False, MO=dp.L1Distance[int], TOA="i64")
        assert (bins >> cbc)(_snapped_values(counts, cands)) == quantiles.ladder_counts(counts, b)


# --- the tail margin --------------------------------------------------------------------------------


def _sum_pmf(scale: float, terms: int) -> tuple[np.ndarray, np.ndarray]:
    """Support and exact pmf of a sum of `terms` independent discrete Laplace variables (truncated
    where the mass left out is far below the tolerances checked)."""
    q = math.exp(-1.0 / scale)
    support = int(60 * scale) + 10
    z = np.arange(-support, support + 1)
    one = (1 - q) / (1 + q) * q ** np.abs(z)
    pmf = one
    for _ in range(terms - 1):
        pmf = np.convolve(pmf, one)
    return np.arange(-(len(pmf) // 2), len(pmf) // 2 + 1), pmf


@pytest.mark.parametrize(("scale", "terms"), [(0.7, 1), (2.0, 3), (5.0, 6)])
def test_rank_margin_bounds_the_exact_tail(scale: float, terms: int) -> None:
    """The Chernoff margin is a true tail bound: the exact tail of a sum of discrete Laplace variables
    (by convolution) beyond it is <= 2.5%, and it is not loose by more than a factor 2."""
    z, pmf = _sum_pmf(scale, terms)
    upper_tail = pmf[::-1].cumsum()[::-1]  # P(S >= z)
    exact = float(z[np.argmax(upper_tail - pmf <= quantiles.TAIL)])  # smallest x with P(S > x) <= TAIL
    for alpha, weight in [(0.0, 1.0), (1.0, 1.0), (0.5, 0.5)]:
        if alpha == 0.5:
            below, above = terms // 2, terms - terms // 2
        else:
            below, above = (terms, 0) if alpha == 0.0 else (0, terms)
        t = quantiles.rank_margin(scale, below, above, alpha)
        assert float(pmf[weight * z > t].sum()) <= quantiles.TAIL
        assert t <= 2 * weight * exact + 2


@pytest.mark.parametrize(("sigma", "terms"), [(0.8, 1), (3.0, 4)])
def test_gaussian_margin_bounds_the_exact_tail(sigma: float, terms: int) -> None:
    """For a zCDP interval release (discrete Gaussian counts) the subgaussian margin is a true tail
    bound too (exact discrete Gaussian pmf, convolved), and an unknown mechanism gets no margin."""
    support = int(12 * sigma) + 5
    z = np.arange(-support, support + 1)
    one = np.exp(-(z**2) / (2 * sigma**2))
    one /= one.sum()
    pmf = one
    for _ in range(terms - 1):
        pmf = np.convolve(pmf, one)
    zs = np.arange(-(len(pmf) // 2), len(pmf) // 2 + 1)
    t = quantiles.margin(quantiles.DISCRETE_GAUSSIAN, sigma, terms, 0, 0.0)
    assert float(pmf[zs > t].sum()) <= quantiles.TAIL
    assert quantiles.margin(quantiles.DISCRETE_GAUSSIAN, sigma, 1, 1, 0.5) < t or terms == 1
    assert quantiles.DISCRETE_LAPLACE == mechanisms.DISCRETE_LAPLACE
    with pytest.raises(ValueError, match="no interval margin"):
        quantiles.margin("laplace", sigma, terms, 0, 0.0)


def test_worst_margin_bounds_every_ladder_margin() -> None:
    """ExplainQuery's half-width of an interval release bounds the margin at every ladder position."""
    for scale in (0.5, 3.0, 40.0):
        worst = quantiles.worst_margin(scale)
        for alpha in (0.0, 0.1, 0.5, 0.9, 1.0):
            for i in range(quantiles.MAX_LADDER_CELLS):
                assert quantiles.rank_margin(scale, i, quantiles.MAX_LADDER_CELLS - i, alpha) <= worst


# --- the certification rule -------------------------------------------------------------------------


@pytest.mark.parametrize("integer", [True, False])
def test_exact_counts_certify_the_tightest_ladder_interval(integer: bool) -> None:
    """With a tiny noise scale the interval holds [x_(r_lo), x_(r_hi)] and its ends are ladder boundaries
    (on a float grid, moved out one step for the snapping), for several alphas and points."""
    rng = random.Random(5)
    cands = quantile_candidates(0.0, 100.0, integer)
    m = len(cands)
    for _ in range(40):
        counts = [rng.choice([0, 0, 0, 1, 2, 30]) for _ in range(m)]
        if sum(counts) == 0:
            continue
        values = _snapped_values(counts, cands)
        alpha = rng.choice([0.0, 0.1, 0.5, 0.75, 1.0])
        p = rng.randrange(m)
        b = quantiles.ladder(p, m)
        lo, hi = quantiles.certified_interval(
            quantiles.ladder_counts(counts, b), b, alpha, 1e-3, cands, integer)
        t_lo, t_hi = _order_stat_bounds(values, alpha)
        assert lo <= t_lo <= t_hi <= hi
        if integer:  # the ends are ladder boundaries (or L, U)
            assert lo in (cands[0], *(cands[x] for x in b)) and hi in (cands[-1], *(cands[x - 1] for x in b))


def test_lower_end_needs_every_boundary_below_certified() -> None:
    """A noisy count that fails to certify a boundary stops the walk there (the argument's fixed boundary)."""
    cands = tuple(float(v) for v in range(11))
    b = (2, 4, 6, 8)
    # cells [0,2) [2,4) [4,6) [6,8) [8,11): 100 values, median in [4, 6)
    exact = [10, 20, 40, 20, 10]
    assert quantiles.certified_interval(exact, b, 0.5, 1e-3, cands, True) == (4.0, 5.0)
    # boundary 4 is not certified (too many below it), boundary 6 would be: the lower walk stops at 2
    noisy = [10, 45, -40, 75, 10]
    assert quantiles.certified_interval(noisy, b, 0.5, 1e-3, cands, True) == (2.0, 7.0)


def test_empty_cell_gets_the_declared_bounds() -> None:
    """No values: nothing can be certified, so the interval is [L, U]."""
    cands = quantile_candidates(0.0, 10.0, True)
    b = quantiles.ladder(5, len(cands))
    assert quantiles.certified_interval([0] * (len(b) + 1), b, 0.5, 1.0, cands, True) == (0.0, 10.0)


# --- accounting: the charge is OpenDP's map ----------------------------------------------------------


@pytest.mark.parametrize(("epsilon", "share"), [(0.1, None), (1.0, 0.3), (2.5, 0.9)])
def test_quantile_charge_is_the_opendp_composition(epsilon: float, share: float | None) -> None:
    """The point and interval costs are their measurements' maps at K, their shares are the requested
    split, and their sum is exactly the map of OpenDP's composition of the two chains on raw values."""
    plan = _plan(_median("x", -2.0, 4.0, share), Aggregate(AggregateKind.COUNT), grouped=True)
    costs = mechanisms.price(plan, DATASET, epsilon)
    by = {(c.aggregate_index, c.component): c for c in costs}
    point, interval = by[(0, "quantile")], by[(0, quantiles.INTERVAL)]
    f = quantiles.DEFAULT_INTERVAL_SHARE if share is None else share
    assert point.epsilon == pytest.approx(epsilon / 2 * (1 - f), rel=1e-9)
    assert interval.epsilon == pytest.approx(epsilon / 2 * f, rel=1e-9)
    assert interval.mechanism == mechanisms.DISCRETE_LAPLACE and interval.sensitivity == K
    cands = quantile_candidates(-2.0, 4.0, False)
    assert point.epsilon == mechanisms.quantile_measurement(cands, 0.5, point.scale).map(K)
    assert interval.epsilon == mechanisms.make_measurement(True, interval.scale).map(K)
    edges = [cands[b] for b in quantiles.ladder(500, len(cands))]
    composed = quantiles.composed_measurement(cands, 0.5, point.scale, interval.scale, edges)
    # OpenDP adds the two maps rounding upwards; the ledger sums them with math.fsum: equal to the ulp
    total = mechanisms.total_epsilon((point, interval))
    assert 0.0 <= composed.map(K) - total <= math.ulp(total)
    assert composed.map(K) <= epsilon


def test_adaptive_composition_accepts_the_charged_releases_on_raw_values() -> None:
    """Run the whole quantile release through OpenDP's adaptive compositor on raw values, with the
    charged epsilons as its budgets: OpenDP accepts both measurements (each map <= its charge, the
    ladder chosen from the point's output) and the compositor's map is the total charge."""
    plan = _plan(_median("age", 0.0, 100.0))
    costs = mechanisms.price(plan, DATASET, 1.0)
    point, interval = costs
    comp = quantiles.adaptive_composition(K, point.epsilon, interval.epsilon)
    assert 0.0 <= comp.map(K) - mechanisms.total_epsilon(costs) <= math.ulp(comp.map(K))
    cands = quantile_candidates(0.0, 100.0, True)
    values = [float(random.Random(1).randint(20, 60)) for _ in range(300)]
    session = comp(values)
    p = session(quantiles.score_measurement(cands, 0.5, point.scale))
    edges = [cands[b] for b in quantiles.ladder(p, len(cands))]
    noisy = session(quantiles.ladder_measurement(edges, interval.scale))
    assert len(noisy) == len(edges) + 1
    with pytest.raises(dp.OpenDPException, match="out of queries"):
        session(quantiles.ladder_measurement(edges, interval.scale))  # a third release is refused
    over = quantiles.adaptive_composition(K, point.epsilon, interval.epsilon)(values)
    with pytest.raises(dp.OpenDPException, match="insufficient budget"):  # and so is a costlier one
        over(quantiles.score_measurement(cands, 0.5, point.scale / 2))


def test_interval_share_zero_is_one_release_and_validated() -> None:
    """Share 0 prices only the point (all of the epsilon); shares outside [0, 1) and on other kinds are
    refused by the protocol; the share survives the boundary encoding and is omitted when unset."""
    costs = mechanisms.price(_plan(_median("age", 0.0, 100.0, 0.0)), DATASET, 1.0)
    assert [c.component for c in costs] == ["quantile"] and costs[0].epsilon == pytest.approx(1.0, rel=1e-9)
    for bad in (1.0, -0.1, math.nan):
        with pytest.raises(ValueError, match="interval_share"):
            _median("age", 0.0, 100.0, bad)
    with pytest.raises(ValueError, match="interval_share"):
        Aggregate(AggregateKind.SUM, Column("age"), 1.0, 0.0, 100.0, None, 0.5)
    plan = _plan(_median("age", 0.0, 100.0, 0.25), _median("x", -2.0, 4.0))
    assert plan_from_json(plan_to_json(plan)) == plan
    assert "interval_share" not in plan_to_json(plan)["aggregates"][1]


def test_interval_half_width_in_explain_is_the_worst_margin() -> None:
    """ExplainQuery's half_width_95 of an interval release is the certification margin in rows."""
    cost = ReleaseCost(0, quantiles.INTERVAL, mechanisms.DISCRETE_LAPLACE, 1.0, 4.0, 0.25)
    assert mechanisms.half_width(cost) == pytest.approx(quantiles.worst_margin(4.0), rel=1e-9)


def test_unbounded_min_is_refused_by_pricing() -> None:
    """MIN/MAX need finite bounds like every quantile (the analyzer says "add CLAMP")."""
    free = TableInfo("t", (ColumnInfo("pid", "int64", "identifier"), ColumnInfo("f", "float64", "sensitive")),
                     max_rows_per_unit=1)
    plan = QueryPlan("d", "t", (Aggregate(AggregateKind.QUANTILE, Column("f"), 1.0, 0.0, 1.0, 0.0),),
                     (OutputColumn("v", aggregate_index=0),), None, ())
    with pytest.raises(PlanRejectedError, match="finite bounds"):
        mechanisms.price(plan, DatasetInfo("d", "pid", (free,), version="v"), 1.0)


# --- why not three shifted exponential-mechanism releases ------------------------------------------


def test_shifted_rank_exponential_mechanism_misses_under_a_point_mass() -> None:
    """The textbook design (a lower end from the exponential mechanism at the rank shifted down by its
    own 97.5% rank accuracy, moved down one more grid step) is not honest: on 1,023 zeros followed by one
    value per grid step, its exact probability of landing above the true median is 0.91, not
    <= 2.5%. (Exact softmax over OpenDP's scores; no sampling.)"""
    cands = quantile_candidates(0.0, 100.0, False)
    m = len(cands)
    counts = [1023] + [1] * (m - 1)
    n = sum(counts)
    values = _snapped_values(counts, cands)
    t_lo, _ = _order_stat_bounds(values, 0.5)
    assert t_lo == 0.0
    eps = 0.1
    d = float(mechanisms.score_transformation(cands, 0.5).map(1))
    scale, _ = mechanisms.calibrate_quantile(mechanisms.Component(0, "quantile", True, d, 1.0, cands, 0.5, 1), eps)
    shift = mechanisms.quantile_rank_accuracy(ReleaseCost(0, "quantile", mechanisms.NOISY_MAX, d, scale, eps),
                                              m, 0.5, 0.025)
    alpha_lo = 0.5 - shift / n
    d_lo = float(mechanisms.score_transformation(cands, alpha_lo).map(1))
    scale_lo, _ = mechanisms.calibrate_quantile(
        mechanisms.Component(0, "quantile", True, d_lo, 1.0, cands, alpha_lo, 1), eps)
    scores = mechanisms.quantile_scores(counts, alpha_lo)
    best = min(scores)
    weights = [math.exp(-(s - best) / scale_lo) for s in scores]
    above = sum(w for j, w in enumerate(weights) if j >= 1 and cands[j - 1] > t_lo) / sum(weights)
    assert above > 0.5
    # The ladder certification on the same data never claims a lower end above the truth (tiny noise).
    for p in range(0, m, 97):
        b = quantiles.ladder(p, m)
        lo, _ = quantiles.certified_interval(quantiles.ladder_counts(counts, b), b, 0.5, 1e-3, cands, False)
        assert lo <= t_lo


def test_snapping_is_exact_only_for_integer_expressions() -> None:
    """The compiled quantile query says when snapping is the identity (integer expression on the grid of
    every integer): a float column whose 1,024-point grid happens to be the integers 0..1023 is not
    exact, so its interval ends move out one step for the snapping."""
    table = TableInfo("t", (ColumnInfo("pid", "int64", "identifier"),
                            ColumnInfo("n", "int64", "public", lower=0, upper=100),
                            ColumnInfo("f", "float64", "public", lower=0.0, upper=1023.0)), max_rows_per_unit=1)
    ds = DatasetInfo("d", "pid", (table,), version="v")
    plan = QueryPlan("d", "t", (
        Aggregate(AggregateKind.QUANTILE, Column("n"), 1.0, 0.0, 100.0, 0.5),
        Aggregate(AggregateKind.QUANTILE, Column("f"), 1.0, 0.0, 1023.0, 0.5),
    ), (OutputColumn("a", aggregate_index=0), OutputColumn("b", aggregate_index=1)), None, ())
    compiled = compile_plan(plan, table, sql_table="d__t", unit="pid", max_cells=10, dataset=ds)
    exact = {q.aggregate_index: q.exact for q in compiled.quantiles}
    assert exact == {0: True, 1: False}
    cands = compiled.quantiles[1].candidates
    assert cands[1] - cands[0] == 1.0  # integer-looking grid, yet values like 4.4 snap to 4
    counts = [0] * len(cands)
    counts[4] = 10  # ten values in [3.5, 4.5]
    b = quantiles.ladder(4, len(cands))
    lo, hi = quantiles.certified_interval(quantiles.ladder_counts(counts, b), b, 0.5, 1e-3, cands, False)
    assert lo <= 3.5 and hi >= 4.5
