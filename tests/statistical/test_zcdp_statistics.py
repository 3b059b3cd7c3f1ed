"""Statistical checks of the Gaussian family used by zCDP grants (marked `statistical`; each states its
false-failure probability): interval coverage, and an empirical privacy audit of the Gaussian count at
the (epsilon, delta) it is reported at."""

from __future__ import annotations

import math

import pytest

from sandbox.pricing import mechanisms, zcdp
from sandbox.protocol.messages import ReleaseCost
from tests.statistical.test_new_aggregates_statistics import _binom_tail_ge, _clopper_pearson

pytestmark = pytest.mark.statistical


def _cost(integer: bool, sensitivity: float, rho: float, component: str = "count") -> ReleaseCost:
    scale, charged = zcdp.calibrate_gaussian(integer, sensitivity, rho)
    mech = mechanisms.DISCRETE_GAUSSIAN if integer else mechanisms.GAUSSIAN
    return ReleaseCost(0, component, mech, sensitivity, scale, 0.0, rho=charged)


@pytest.mark.parametrize("integer", [True, False], ids=["discrete_gaussian", "gaussian"])
def test_gaussian_intervals_cover_the_truth(integer: bool) -> None:
    """600 releases of a count (discrete Gaussian) / float sum (Gaussian) at rho 0.02: the 95% interval
    from OpenDP's accuracy function must miss the truth at most m times, m the smallest count whose
    binomial(600, 0.05) upper tail is below 1e-6; so the false-failure probability is < 1e-6 when the
    intervals cover at >= 95%."""
    n = 600
    cost = _cost(integer, 3.0 if integer else 7.5, 0.02)
    truths = [1000 + 7 * i for i in range(n)] if integer else [250.5 + 3.25 * i for i in range(n)]
    noisy = mechanisms.release_vector(cost, truths)
    misses = 0
    for truth, v in zip(truths, noisy, strict=True):
        nv = mechanisms.noisy_count_or_sum(cost, v, nonnegative=True)
        misses += not (nv.ci_lower <= truth <= nv.ci_upper)
    allowed = next(m for m in range(n) if _binom_tail_ge(n, 0.05, m + 1) < 1e-6)
    assert misses <= allowed


def test_gaussian_average_interval_covers_the_truth() -> None:
    """AVG from a Gaussian sum and count (the union-bound box at alpha/2 each): 300 releases, misses at
    most m with binomial(300, 0.05) upper tail below 1e-6 (false failure < 1e-6)."""
    n, rows = 300, 40
    s_cost = _cost(True, 3 * 100.0, 0.05, "sum")
    c_cost = _cost(True, 3.0, 0.05, "count")
    misses = 0
    for i in range(n):
        total, count = 37 * rows + i, rows
        truth = total / count
        ns = float(mechanisms.release_vector(s_cost, [total])[0])
        nc = float(mechanisms.release_vector(c_cost, [count])[0])
        v = mechanisms.noisy_average(s_cost, c_cost, ns, nc, 0.0, 100.0)
        misses += not (v.ci_lower <= truth <= v.ci_upper)
    allowed = next(m for m in range(n) if _binom_tail_ge(n, 0.05, m + 1) < 1e-6)
    assert misses <= allowed


@pytest.mark.slow
def test_empirical_privacy_audit_gaussian_count() -> None:
    """Neighbouring datasets differ in one unit at maximum contribution (K = 2 rows). The discrete
    Gaussian count is calibrated to rho = 0.125 and reported as (epsilon, delta) at delta = 1e-6 by
    OpenDP's conversion. For the events "output > t" and "output <= t" (t between the two truths),
    with 4,000 runs per dataset, the Clopper-Pearson lower bound of ln((P1 - delta) / P0) (each
    proportion at 1 - 1e-7/2 confidence, four bounds, so the false-failure probability is < 1e-6) must
    not exceed the reported epsilon."""
    k, rho, delta, trials = 2, 0.125, 1e-6, 4000
    cost = _cost(True, float(k), rho)
    eps, reported_delta = zcdp.to_approx_dp(cost.rho, 0.0, delta)
    assert reported_delta == delta
    d0, d1 = 100, 100 + k
    threshold = 100 + k / 2
    hits = [0, 0]
    for _ in range(trials):
        hits[0] += mechanisms.release_vector(cost, [d0])[0] > threshold
        hits[1] += mechanisms.release_vector(cost, [d1])[0] > threshold
    conf = 1 - 1e-7
    p1_lo, _ = _clopper_pearson(hits[1], trials, conf)
    _, p0_hi = _clopper_pearson(hits[0], trials, conf)
    q1_lo, _ = _clopper_pearson(trials - hits[0], trials, conf)
    _, q0_hi = _clopper_pearson(trials - hits[1], trials, conf)
    lower_bounds = []
    if p1_lo - delta > 0 and p0_hi > 0:
        lower_bounds.append(math.log((p1_lo - delta) / p0_hi))
    if q1_lo - delta > 0 and q0_hi > 0:
        lower_bounds.append(math.log((q1_lo - delta) / q0_hi))
    assert max(lower_bounds, default=0.0) <= eps
    # the mechanism is not trivially private: the two datasets are told apart
    assert hits[1] > hits[0]
