"""Releases inside the sandbox: OpenDP noise on exact aggregates, and what an answer says about its noise.

`release_vector` and `release_threshold` run the measurement a `ReleaseCost` describes (the one pricing
mapped: `sandbox.pricing.measurements`) on exact aggregates; everything else here is post-processing of
noisy values (intervals, averages, variances), which costs no privacy.

Intervals are OpenDP's accuracy functions at 95%. A count released by a threshold mechanism (partition
selection on one of the plan's counts, `sandbox.plans.selection`) carries the same interval as an
unthresholded one: it holds with probability 95% over the noise, and a key is released only when its
noisy count passes the threshold, so among released keys whose true count lies near the threshold the
noisy counts lean high (the same is true of every peer that thresholds released counts).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import opendp.prelude as dp

from sandbox.pricing import quantiles
from sandbox.pricing.measurements import (
    ALPHA,
    DISCRETE_GAUSSIAN,
    DISCRETE_LAPLACE,
    GAUSSIAN,
    GAUSSIAN_MECHANISMS,
    GAUSSIAN_THRESHOLD,
    INTEGER_MECHANISMS,
    LAPLACE_THRESHOLD,
    NOISY_MAX,
    NOISY_MAX_ZCDP,
    alpha_fraction,
    gaussian_threshold,
    make_measurement,
    make_threshold,
    noisy_max_measurement,
    quantile_scores,
    score_transformation,
)
from sandbox.protocol.plan import AggregateKind
from sandbox.protocol.release import NoisyValue, ReleaseCost

dp.enable_features("contrib")

# Largest exact integer aggregate the i64 path accepts; larger sums go through the float path.
MAX_EXACT_INT = 2**53


def release_quantile(cost: ReleaseCost, candidates: tuple[float, ...], alpha: float, counts: list[int]) -> int:
    """Index of the released candidate for one cell (inside the sandbox only)."""
    return quantile_releaser(cost, candidates, alpha)(counts)


def quantile_releaser(cost: ReleaseCost, candidates: tuple[float, ...], alpha: float) -> Callable[[list[int]], int]:
    """`release_quantile` with the OpenDP measurement built once, for many cells (building it takes
    ~2.4 ms for 1024 candidates, sampling ~5 ms); each call is a fresh release on one cell's counts."""
    t = score_transformation(candidates, alpha)
    meas = noisy_max_measurement(t, cost.scale, zcdp=cost.mechanism == NOISY_MAX_ZCDP)
    return lambda counts: int(meas(quantile_scores(counts, alpha)))


def quantile_rank_accuracy(cost: ReleaseCost, n_candidates: int, alpha: float, level_alpha: float = ALPHA) -> float:
    """With probability >= 1 - level_alpha the released candidate's score exceeds the best score by at
    most scale * ln(m / level_alpha) (the noise of the winner is at most the largest of m noise draws,
    exponential or Gumbel, each exceeding t with probability <= exp(-t / scale)); in rows of rank that
    is this value divided by OpenDP's alpha denominator."""
    _, den = alpha_fraction(alpha)
    return cost.scale * math.log(max(n_candidates, 1) / level_alpha) / den


def release_threshold(cost: ReleaseCost, counts: dict[str, int]) -> dict[str, int]:
    """Run the threshold mechanism `cost` describes (Laplace or Gaussian) on exact per-key counts (inside
    the sandbox); the noisy counts of the keys it keeps.

    Keys with a zero count are left out first: the input is then the sparse form of a vector of counts
    over every possible key, whose neighbouring distance is the d_in pricing charged (a key that exists
    only through rows that count 0 is no different from an absent one).
    """
    for v in counts.values():
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < MAX_EXACT_INT:
            raise ValueError("exact key counts must be non-negative integers")
    positive = {k: v for k, v in counts.items() if v > 0}
    if cost.mechanism == GAUSSIAN_THRESHOLD:
        meas = gaussian_threshold(cost.scale, cost.threshold)
    elif cost.mechanism == LAPLACE_THRESHOLD:
        meas = make_threshold(cost.scale, cost.threshold)
    else:
        raise ValueError(f"{cost.mechanism!r} is not a threshold mechanism")
    out = meas(positive)
    return {str(k): int(v) for k, v in out.items()}


# Memoized: a pure function of (cost, alpha), asked once per released cell although every cell of a
# component shares one cost (a 31-group AVG asked OpenDP 62 times, about 0.1 ms each).
@functools.lru_cache(maxsize=4096)
def half_width(cost: ReleaseCost, alpha: float = ALPHA) -> float:
    """Half-width of the (1 - alpha) interval of one noisy value, from OpenDP's accuracy functions.

    For a quantile (noisy max) it is the bound on the released candidate's score excess over the best
    candidate, scale * ln(1024 / alpha), in OpenDP's score units (see `quantile_rank_accuracy`).
    """
    if cost.mechanism in (NOISY_MAX, NOISY_MAX_ZCDP):
        return cost.scale * math.log(1024 / alpha)
    if cost.component == quantiles.INTERVAL:
        # In rows of rank: the certification margin of each end of the quantile's interval (a bound
        # over every ladder position and alpha; see `sandbox.pricing.quantiles.worst_margin`).
        return quantiles.worst_margin(cost.scale, alpha / 2, cost.mechanism)
    if cost.mechanism == GAUSSIAN:
        return float(dp.gaussian_scale_to_accuracy(cost.scale, alpha))
    if cost.mechanism in (DISCRETE_GAUSSIAN, GAUSSIAN_THRESHOLD):
        return discrete_gaussian_accuracy(cost.scale, alpha)
    if cost.mechanism in (DISCRETE_LAPLACE, LAPLACE_THRESHOLD):
        a = float(dp.discrete_laplacian_scale_to_accuracy(cost.scale, alpha))
        if not (math.isfinite(a) and a >= 0):
            # OpenDP returns -inf for tiny scales. P(|Z| >= 1) = 2q / (1 + q) with q = exp(-1/scale):
            # if that is at most alpha the noise is 0 with probability >= 1 - alpha; otherwise fall
            # back to the (wider) continuous Laplace accuracy rounded up.
            q = math.exp(-1.0 / cost.scale)
            if 2 * q / (1 + q) <= alpha:
                return 0.0
            return float(math.ceil(dp.laplacian_scale_to_accuracy(cost.scale, alpha)))
        return a
    return float(dp.laplacian_scale_to_accuracy(cost.scale, alpha))


# Above this scale OpenDP's exact discrete-Gaussian accuracy (a sum over the pmf, linear in the scale:
# 0.6 s at scale 1e6) is replaced by the bound below.
EXACT_DISCRETE_GAUSSIAN_SCALE = 1e4


def discrete_gaussian_accuracy(scale: float, alpha: float = ALPHA) -> float:
    """An integer a with P(|Z| >= a) <= alpha for OpenDP's discrete Gaussian Z at `scale`.

    Up to `EXACT_DISCRETE_GAUSSIAN_SCALE`: OpenDP's `discrete_gaussian_scale_to_accuracy`. Above it:
    ceil(OpenDP's continuous `gaussian_scale_to_accuracy`) + 1, which is also valid: the discrete
    normalizer is at least sqrt(2 pi) scale (Poisson summation; every term is positive) and
    sum_{x >= k} exp(-x^2 / 2s^2) <= integral_{k-1}^inf, so P(|Z| >= k) <= P(|N(0, s^2)| >= k - 1).
    """
    if scale <= EXACT_DISCRETE_GAUSSIAN_SCALE:
        return float(dp.discrete_gaussian_scale_to_accuracy(scale, alpha))
    return float(math.ceil(dp.gaussian_scale_to_accuracy(scale, alpha)) + 1)


def stddev(cost: ReleaseCost) -> float:
    """Standard deviation of the noise: sqrt(2)*scale (Laplace); the exact discrete Laplace formula (also
    the Laplace threshold's noise on i64 counts); at most the scale for the (discrete) Gaussian family."""
    if cost.mechanism in (NOISY_MAX, NOISY_MAX_ZCDP):
        return cost.scale
    if cost.mechanism in GAUSSIAN_MECHANISMS or cost.mechanism == GAUSSIAN_THRESHOLD:
        return cost.scale  # the discrete Gaussian's is at most its scale (CKS20, Prop. 19)
    if cost.mechanism in (DISCRETE_LAPLACE, LAPLACE_THRESHOLD):
        # sqrt(2q) / (1 - q) with q = exp(-1/scale); 1 - q as -expm1(-1/scale), which stays positive at
        # the scales of sensitivities near 2^53 (where 1 - exp(-1/scale) is 0 in floating point).
        q = math.exp(-1.0 / cost.scale)
        return math.sqrt(2 * q) / -math.expm1(-1.0 / cost.scale)
    return math.sqrt(2.0) * cost.scale


def release_vector(cost: ReleaseCost, exact: Sequence[int | float]) -> list[int | float]:
    """Add the calibrated noise to a vector of exact aggregates (inside the sandbox only).

    Every input must be finite (and within i64 for the discrete path): OpenDP's Laplace does not check
    (NaN is read as 0, infinity comes back without noise), so a bad input is a bug and raises ValueError.

    Privacy: the same measurement `price` mapped; the caller has clamped and truncated so that the L1
    distance between neighbouring vectors is at most `cost.sensitivity`.
    """
    integer = cost.mechanism in INTEGER_MECHANISMS
    if integer:
        values: list[int | float] = []
        for v in exact:
            if isinstance(v, float):
                if not (math.isfinite(v) and v.is_integer()):
                    raise ValueError("non-finite or fractional value on the integer path")
                v = int(v)
            if abs(v) >= MAX_EXACT_INT:
                raise ValueError("integer aggregate out of range")
            values.append(v)
    else:
        values = [float(v) for v in exact]
        if not all(math.isfinite(v) and abs(v) < 1e15 for v in values):
            raise ValueError("non-finite or out-of-range value on the float path")
    meas = make_measurement(integer, cost.scale, gaussian=cost.mechanism in GAUSSIAN_MECHANISMS)
    noisy = meas(values)
    return [int(v) if integer else float(v) for v in noisy]


def noisy_count_or_sum(cost: ReleaseCost, noisy: int | float, *, nonnegative: bool) -> NoisyValue:
    """Wrap one noisy count or sum with its noise description and 95% interval.

    Counts are post-processed to be non-negative (the interval is intersected with [0, inf)), which
    cannot remove the true value from it.
    """
    hw = half_width(cost)
    lo, hi = float(noisy) - hw, float(noisy) + hw
    value: int | float = noisy
    if nonnegative:
        value = max(noisy, 0)
        lo = max(lo, 0.0)
        hi = max(hi, 0.0)
    return NoisyValue(
        value=value,
        mechanism=cost.mechanism,
        scale=cost.scale,
        stddev=stddev(cost),
        ci_lower=lo,
        ci_upper=hi,
    )


def noisy_average(
    sum_cost: ReleaseCost,
    count_cost: ReleaseCost,
    noisy_sum: float,
    noisy_count: float,
    lower: float,
    upper: float,
    centre: float = 0.0,
) -> NoisyValue:
    """AVG as post-processing of a noisy sum of (x - centre) and a noisy count, with an honest 95% interval.

    The interval: with probability at least 97.5% each, the true sum lies in noisy_sum +- a_s and the true
    count in noisy_count +- a_c (OpenDP accuracy at alpha = 0.025); by the union bound both hold with
    probability at least 95%, and then the true average lies in the range of s/c over that box,
    intersected with [lower, upper]. If the count box reaches zero the interval is [lower, upper].
    The point estimate is centre + noisy_sum / max(noisy_count, 1), clamped to [lower, upper]. (The sum
    is centred, `avg_centre`, so the count's noise moves the mean by at most half the range.)
    """
    a_s = half_width(sum_cost, ALPHA / 2)
    a_c = half_width(count_cost, ALPHA / 2)
    s_lo, s_hi = noisy_sum - a_s, noisy_sum + a_s
    c_lo, c_hi = max(noisy_count - a_c, 0.0), noisy_count + a_c
    if c_lo < 1.0:
        lo, hi = lower, upper
    else:
        candidates = [centre + s / n for s in (s_lo, s_hi) for n in (c_lo, c_hi)]
        lo, hi = max(lower, min(candidates)), min(upper, max(candidates))
        if lo > hi:  # the box lies outside the bounds entirely; the bounds still hold the truth
            lo, hi = lower, upper
    value = min(max(centre + noisy_sum / max(noisy_count, 1.0), lower), upper)
    # Delta-method standard deviation of c + s/n, for information; the interval above is the guarantee.
    c = max(noisy_count, 1.0)
    sd = math.sqrt((stddev(sum_cost) / c) ** 2 + ((value - centre) * stddev(count_cost) / c) ** 2)
    return NoisyValue(
        value=float(value),
        mechanism=f"{sum_cost.mechanism}/{count_cost.mechanism}",
        scale=sum_cost.scale,
        stddev=sd,
        ci_lower=float(lo),
        ci_upper=float(hi),
    )


def _var_z_range(
    n_lo: float, n_hi: float, s1_lo: float, s1_hi: float, s2_lo: float, s2_hi: float
) -> tuple[float, float]:
    """Range of S2/n - (S1/n)^2 over the box, for z in [-1, 1] (so the variance is in [0, 1])."""
    if n_lo < 1.0:
        return 0.0, 1.0

    def f(a: float, b: float, n: float) -> float:
        return a / n - b / (n * n)

    # Lower end: smallest S2, largest S1^2; f(n) = a/n - b/n^2 has no interior minimum on n > 0.
    b_max = max(s1_lo * s1_lo, s1_hi * s1_hi)
    lo = min(f(s2_lo, b_max, n_lo), f(s2_lo, b_max, n_hi))
    # Upper end: largest S2, smallest S1^2; the interior maximum is at n* = 2b/a.
    b_min = 0.0 if s1_lo <= 0.0 <= s1_hi else min(s1_lo * s1_lo, s1_hi * s1_hi)
    points = [n_lo, n_hi]
    if s2_hi > 0:
        star = 2 * b_min / s2_hi
        if n_lo < star < n_hi:
            points.append(star)
    hi = max(f(s2_hi, b_min, n) for n in points)
    return min(max(lo, 0.0), 1.0), min(max(hi, 0.0), 1.0)


def noisy_variance(
    kind: AggregateKind,
    count_cost: ReleaseCost,
    sum_cost: ReleaseCost,
    sumsq_cost: ReleaseCost,
    noisy_count: float,
    noisy_sum: float,
    noisy_sumsq: float,
    lower: float,
    upper: float,
) -> NoisyValue:
    """VAR_POP / VAR_SAMP / STDDEV_POP / STDDEV_SAMP as post-processing of three noisy releases.

    The releases are n (count), S1 = sum z and S2 = sum z^2 with z = (x - c) / h, c = (L+U)/2,
    h = (U-L)/2, so var_pop(x) = h^2 (S2/n - (S1/n)^2) and var_samp = var_pop * n / (n - 1).

    Interval (same union-bound box method as AVG): each true quantity lies within its OpenDP accuracy
    interval at alpha/3 with probability >= 1 - 0.05/3, so all three hold with probability >= 95%;
    the interval is the range of the variance over that box (S1 in [-n, n], S2 in [0, n] added), clamped
    to [0, h^2] for the population variance and [0, h^2 n/(n-1)] (at most 2 h^2) for the sample one.
    If the count box reaches below 1 the interval is the whole range. STDDEV takes square roots.
    The "truth" is the statistic of the contribution-bounded, clamped, non-NULL values.
    """
    half = (upper - lower) / 2 or 1.0
    h2 = half * half
    a_c = half_width(count_cost, ALPHA / 3)
    a_1 = half_width(sum_cost, ALPHA / 3)
    a_2 = half_width(sumsq_cost, ALPHA / 3)
    n_lo, n_hi = max(noisy_count - a_c, 0.0), max(noisy_count + a_c, 0.0)
    s1_lo, s1_hi = max(noisy_sum - a_1, -n_hi), min(noisy_sum + a_1, n_hi)
    s2_lo, s2_hi = max(noisy_sumsq - a_2, 0.0), min(noisy_sumsq + a_2, n_hi)
    if s1_lo > s1_hi or s2_lo > s2_hi:  # the box is empty: fall back to the whole range
        v_lo, v_hi = 0.0, 1.0
    else:
        v_lo, v_hi = _var_z_range(n_lo, n_hi, s1_lo, s1_hi, s2_lo, s2_hi)
    n = max(noisy_count, 1.0)
    mean_z = min(max(noisy_sum / n, -1.0), 1.0)
    var_z = min(max(noisy_sumsq / n - mean_z * mean_z, 0.0), 1.0)
    sample = kind in (AggregateKind.VAR_SAMP, AggregateKind.STDDEV_SAMP)
    cap = 1.0
    if sample:
        cap = n_lo / (n_lo - 1) if n_lo >= 2 else 2.0
        v_lo = v_lo * (n_hi / (n_hi - 1) if n_hi >= 2 else 1.0)
        v_hi = v_hi * cap
        var_z = var_z * (n / (n - 1) if n >= 2 else 1.0)
    var_z = min(var_z, cap)
    v_lo, v_hi = min(v_lo, cap), min(v_hi, cap)
    sd_c, sd_1, sd_2 = stddev(count_cost), stddev(sum_cost), stddev(sumsq_cost)
    # Delta-method standard deviation, for information; the interval above is the guarantee.
    sd = h2 * math.sqrt((sd_2 / n) ** 2 + (2 * mean_z * sd_1 / n) ** 2 + (var_z * sd_c / n) ** 2)
    value, lo, hi = h2 * var_z, h2 * v_lo, h2 * v_hi
    if kind in (AggregateKind.STDDEV_POP, AggregateKind.STDDEV_SAMP):
        root = math.sqrt(value)
        sd = sd / (2 * root) if root > 0 else math.sqrt(sd)
        value, lo, hi = root, math.sqrt(lo), math.sqrt(hi)
    return NoisyValue(
        value=float(value),
        mechanism=f"{count_cost.mechanism}/{sum_cost.mechanism}/{sumsq_cost.mechanism}",
        scale=sum_cost.scale,
        stddev=float(min(sd, 1e300)),
        ci_lower=float(lo),
        ci_upper=float(hi),
    )
