"""Statistical checks of the new aggregates (marked `statistical`; each states its false-failure
probability) and an empirical privacy audit (marked `statistical` and `slow`)."""

from __future__ import annotations

import math
import random

import pytest

from sandbox.plans.compile import quantile_candidates
from sandbox.pricing import mechanisms, quantiles
from sandbox.protocol.messages import AggregateKind, ReleaseCost


def _pmf(n: int, p: float, i: int) -> float:
    if p <= 0.0:
        return 1.0 if i == 0 else 0.0
    if p >= 1.0:
        return 1.0 if i == n else 0.0
    log = (
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
        + i * math.log(p) + (n - i) * math.log1p(-p)
    )
    return math.exp(log)


def _binom_tail_ge(n: int, p: float, k: int) -> float:
    return sum(_pmf(n, p, i) for i in range(k, n + 1))


def _costs(eps: float) -> tuple[ReleaseCost, ReleaseCost, ReleaseCost]:
    s = mechanisms.calibrate(True, 1.0, eps / 3)
    f = mechanisms.calibrate(False, 1.0, eps / 3)
    return (
        ReleaseCost(0, "count", mechanisms.DISCRETE_LAPLACE, 1.0, s[0], s[1]),
        ReleaseCost(0, "sum", mechanisms.LAPLACE, 1.0, f[0], f[1]),
        ReleaseCost(0, "sumsq", mechanisms.LAPLACE, 1.0, f[0], f[1]),
    )


@pytest.mark.statistical
@pytest.mark.parametrize(
    "kind",
    [AggregateKind.VAR_POP, AggregateKind.VAR_SAMP, AggregateKind.STDDEV_POP, AggregateKind.STDDEV_SAMP],
)
def test_variance_intervals_cover_the_truth(kind: AggregateKind) -> None:
    """300 releases on 60 values at epsilon 0.5: the 95% interval may miss the truth at most `allowed`
    times, the smallest count whose binomial(300, 0.05) upper tail is below 1e-6 (about 42). The
    union-bound box covers with probability >= 0.95 per release, so the false-failure probability is
    < 1e-6."""
    rng = random.Random(7)
    lo, hi = 0.0, 10.0
    xs = [min(max(rng.gauss(6, 2), lo), hi) for _ in range(60)]
    c, h = 5.0, 5.0
    z = [(x - c) / h for x in xs]
    n, s1, s2 = len(xs), sum(z), sum(t * t for t in z)
    mean = sum(xs) / n
    pop = sum((x - mean) ** 2 for x in xs) / n
    truth = {
        AggregateKind.VAR_POP: pop,
        AggregateKind.VAR_SAMP: pop * n / (n - 1),
        AggregateKind.STDDEV_POP: math.sqrt(pop),
        AggregateKind.STDDEV_SAMP: math.sqrt(pop * n / (n - 1)),
    }[kind]
    costs = _costs(0.5)
    covered = 0
    for _ in range(300):
        (nc,) = mechanisms.release_vector(costs[0], [n])
        (ns1,) = mechanisms.release_vector(costs[1], [s1])
        (ns2,) = mechanisms.release_vector(costs[2], [s2])
        v = mechanisms.noisy_variance(kind, *costs, float(nc), float(ns1), float(ns2), lo, hi)
        covered += v.ci_lower <= truth <= v.ci_upper
    allowed = next(m for m in range(300) if _binom_tail_ge(300, 0.05, m + 1) < 1e-6)
    assert 300 - covered <= allowed


@pytest.mark.statistical
def test_median_lands_near_the_truth_on_easy_data() -> None:
    """10,000 values uniform on the integers 0..100 (true median 50), epsilon 1, K = 1: the released
    median is within 5 of 50 in all 20 runs. Per run, the rank error exceeds scale*ln(m/beta) rows
    with probability <= beta; 5 grid points either side hold ~500 rows, far above the bound at
    beta = 1e-9, so the false-failure probability is < 20e-9 < 1e-6."""
    cands = quantile_candidates(0.0, 100.0, True)
    counts = [100] * 101
    d = float(mechanisms.score_transformation(cands, 0.5).map(1))
    comp = mechanisms.Component(0, "quantile", True, d, 1.0, cands, 0.5, 1)
    scale, eps = mechanisms.calibrate_quantile(comp, 1.0)
    cost = ReleaseCost(0, "quantile", mechanisms.NOISY_MAX, d, scale, eps)
    assert mechanisms.quantile_rank_accuracy(cost, len(cands), 0.5, 1e-9) < 100
    for _ in range(20):
        idx = mechanisms.release_quantile(cost, cands, 0.5, counts)
        assert abs(cands[idx] - 50) <= 5


def _clopper_pearson(k: int, n: int, conf: float) -> tuple[float, float]:
    """Exact (Clopper-Pearson) bounds for a binomial proportion, each side at level (1 - conf) / 2."""
    a = (1 - conf) / 2

    def tail_ge(p: float) -> float:  # P(X >= k), increasing in p
        return _binom_tail_ge(n, p, k)

    def cdf_le(p: float) -> float:  # P(X <= k), decreasing in p
        return sum(_pmf(n, p, i) for i in range(k + 1))

    def bisect(f: object, increasing: bool) -> float:
        assert callable(f)
        lo, hi = 0.0, 1.0
        for _ in range(50):
            mid = (lo + hi) / 2
            below = f(mid) < a
            if below == increasing:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    lower = 0.0 if k == 0 else bisect(tail_ge, True)
    upper = 1.0 if k == n else bisect(cdf_le, False)
    return lower, upper


@pytest.mark.statistical
@pytest.mark.slow
@pytest.mark.parametrize("which", ["count", "sum", "median", "median_interval"])
def test_empirical_privacy_audit(which: str) -> None:
    """Neighbouring datasets differ in one unit at maximum contribution (K = 2 rows at the upper
    bound). Each mechanism is run 2,000 times per dataset; for the threshold event "output > t" the
    Clopper-Pearson lower bound of ln(P1/P0) (each proportion at 1 - 1e-7/2 confidence, so the test
    fails falsely with probability < 1e-6 overall) must not exceed the charged epsilon.

    "median" is the point release alone at the whole epsilon; "median_interval" is the whole quantile
    release as the engine runs it (point at half the epsilon, then the ladder counts around it at the
    other half, then the certified interval), charged the sum of both maps, with the event "the lower
    end of the interval is above t" (the ladder's output)."""
    k, eps, trials = 2, 1.0, 2000
    if which == "median_interval":
        cands = tuple(float(v) for v in range(11))
        d = float(mechanisms.score_transformation(cands, 0.5).map(k))
        comp = mechanisms.Component(0, "quantile", True, d, 1.0, cands, 0.5, k)
        p_scale, p_eps = mechanisms.calibrate_quantile(comp, eps / 2)
        i_scale, i_eps = mechanisms.calibrate(True, float(k), eps / 2)
        charged = p_eps + i_eps
        point = ReleaseCost(0, "quantile", mechanisms.NOISY_MAX, d, p_scale, p_eps)
        interval = ReleaseCost(0, quantiles.INTERVAL, mechanisms.DISCRETE_LAPLACE, float(k), i_scale, i_eps)
        c0 = [0] * 11
        c0[4], c0[6] = 25, 24
        c1 = list(c0)
        c1[10] += k

        def lower_end(counts: list[int]) -> float:
            p = mechanisms.release_quantile(point, cands, 0.5, counts)
            steps = quantiles.ladder(p, len(cands))
            noisy = mechanisms.release_vector(interval, quantiles.ladder_counts(counts, steps))
            return quantiles.certified_interval(noisy, steps, 0.5, i_scale, cands, True)[0]

        hits = [sum(lower_end(c0) > 3.5 for _ in range(trials)), sum(lower_end(c1) > 3.5 for _ in range(trials))]
        _assert_no_violation(hits, trials, charged)
        return
    if which in ("count", "sum"):
        integer = True
        sens = float(k) if which == "count" else float(k * 10)
        scale, charged = mechanisms.calibrate(integer, sens, eps)
        cost = ReleaseCost(0, which, mechanisms.DISCRETE_LAPLACE, sens, scale, charged)
        base = 100 if which == "count" else 1000
        d0, d1 = base, base + int(sens)

        def run(x: int) -> float:
            return float(mechanisms.release_vector(cost, [x])[0])

        threshold = base + sens / 2
    else:
        cands = tuple(float(v) for v in range(11))
        d = float(mechanisms.score_transformation(cands, 0.5).map(k))
        comp = mechanisms.Component(0, "quantile", True, d, 1.0, cands, 0.5, k)
        scale, charged = mechanisms.calibrate_quantile(comp, eps)
        cost = ReleaseCost(0, "quantile", mechanisms.NOISY_MAX, d, scale, charged)
        c0 = [0] * 11
        c0[4], c0[6] = 5, 4
        c1 = list(c0)
        c1[10] += k  # the extra unit's K rows at the upper bound pull the median up

        def run_q(counts: list[int]) -> float:
            return cands[mechanisms.release_quantile(cost, cands, 0.5, counts)]

        threshold = 4.5
    hits = [0, 0]
    for i in range(trials):
        if which == "median":
            hits[0] += run_q(c0) > threshold
            hits[1] += run_q(c1) > threshold
        else:
            hits[0] += run(d0) > threshold
            hits[1] += run(d1) > threshold
        del i
    _assert_no_violation(hits, trials, charged)


def _assert_no_violation(hits: list[int], trials: int, charged: float) -> None:
    """Neither direction's Clopper-Pearson lower bound of ln(P1/P0) exceeds the charged epsilon."""
    conf = 1 - 1e-7
    p1_lo, _ = _clopper_pearson(hits[1], trials, conf)
    _, p0_hi = _clopper_pearson(hits[0], trials, conf)
    q1_lo, _ = _clopper_pearson(trials - hits[0], trials, conf)
    _, q0_hi = _clopper_pearson(trials - hits[1], trials, conf)
    lower_bounds = []
    if p1_lo > 0 and p0_hi > 0:
        lower_bounds.append(math.log(p1_lo / p0_hi))
    if q1_lo > 0 and q0_hi > 0:
        lower_bounds.append(math.log(q1_lo / q0_hi))
    assert max(lower_bounds, default=0.0) <= charged + 1e-9
