"""zCDP pricing: the Gaussian family behind every release of a `privacy_definition = "zcdp"` grant.

Shared by gateway and sandbox like `sandbox.pricing.mechanisms` (pure: no I/O, no data). The plan is split into
the same components as for pure DP (`mechanisms.components`: sensitivities and shares), but each is
priced in rho (zero-concentrated DP, Bun & Steinke 2016) and the charged rho of every release is the
OpenDP privacy map of the measurement that produces it:

* counts and integer sums: `make_gaussian` on i64 vectors with `l2_distance` (OpenDP's discrete
  Gaussian, CKS20); float sums: `make_gaussian` on f64 vectors (OpenDP samples it exactly on a
  lattice). map(d) = d^2 / (2 scale^2). d is the L2 bound of `components` (`Component.l2`, an exact
  int on the integer path, a float rounded up otherwise, as in `sandbox.pricing.mechanisms`): the L1
  bound, which is also an L2 bound (||v||_2 <= ||v||_1 for the change of one unit), except for
  COUNT(DISTINCT unit), where one unit moves each of at most m cells by 1: ||v||_2 <= ceil(sqrt(m)).
* quantiles (MEDIAN, QUANTILE*, PERCENTILE*, MIN, MAX): `make_quantile_score_candidates` >>
  `make_noisy_max(zero_concentrated_divergence(), negate=True)` (OpenDP's zCDP report-noisy-max with
  Gumbel noise, map (d/scale)^2 / 2 on these scores: a quarter of the rho that converting the pure-DP
  chain at the same scale with `make_pureDP_to_zCDP` gives, eps^2 / 2 with eps = 2d/scale).
* partition selection (keys without a public domain): `make_gaussian_threshold` on per-key counts
  with `l02inf_distance` at d_in = (l0, l2, linf) (`Component.keys` with its L2 bound: (R, K, K) on row
  counts, (R, ceil(sqrt(R)), 1) on counts of units; R the cells one unit reaches), either on one of the
  plan's counts, whose released values are then the threshold's noisy counts, or as a separate release
  (`sandbox.plans.selection`). Its output measure is approximate zCDP: its map is (rho, delta); the
  threshold is the smallest whose delta fits the request's delta.

Composition: rho adds up (the query's rho is the sum of the maps, and a grant's spending is the sum
of its queries'); the deltas of partition selection add up too. Reporting as (epsilon, delta): the
total approximate-zCDP loss (rho, delta_s) is converted with OpenDP's `make_zCDP_to_approxDP` and
`make_fix_delta` at the grant's delta (`to_approx_dp`): epsilon is the conversion of rho at
delta - delta_s, so the reported delta is the grant's delta in total.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import opendp.prelude as dp

from sandbox.errors import PlanRejectedError
from sandbox.pricing import mechanisms
from sandbox.pricing.measurements import THRESHOLD_MARGIN, gaussian_threshold_space, key_bound
from sandbox.pricing.measurements import gaussian_threshold as gaussian_threshold
from sandbox.pricing.mechanisms import (
    ALPHA,
    DISCRETE_GAUSSIAN,
    GAUSSIAN,
    GAUSSIAN_THRESHOLD,
    MAX_THRESHOLD,
    NOISY_MAX_ZCDP,
    Component,
    KeyBound,
)
from sandbox.protocol.catalog import DatasetInfo
from sandbox.protocol.plan import QueryPlan
from sandbox.protocol.release import ReleaseCost

dp.enable_features("contrib")

__all__ = [
    "accuracy_to_scale",
    "calibrate_gaussian",
    "calibrate_gaussian_threshold",
    "calibrate_quantile",
    "epsilon_to_rho",
    "gaussian_threshold",
    "price",
    "quantile_measurement",
    "release_threshold",
    "rho_to_epsilon",
    "to_approx_dp",
    "total_rho",
]

_NUDGE = 64


def _check_rho(rho: float) -> None:
    if not (math.isfinite(rho) and rho > 0):
        raise PlanRejectedError("rho must be finite and positive")


def _nudge(scale: float) -> float:
    return math.nextafter(scale, math.inf) * (1 + 1e-15)


def calibrate_gaussian(integer: bool, sensitivity: int | float, rho: float) -> tuple[float, float]:
    """Smallest scale (to float precision) whose OpenDP Gaussian map at `mechanisms.d_in(integer,
    sensitivity)` (the exact int on the integer path) is at most `rho`; (scale, map).

    Raises:
        PlanRejectedError: rho is not finite and positive, the sensitivity is not usable, or the scale
            is not usable.
    """
    _check_rho(rho)
    d_in = mechanisms.d_in(integer, sensitivity)
    scale = d_in / math.sqrt(2.0 * rho)
    if not (math.isfinite(scale) and scale > 0):
        raise PlanRejectedError("noise scale is not a positive finite number")
    for _ in range(_NUDGE):
        meas = mechanisms.make_measurement(integer, scale, gaussian=True)
        cost = float(meas.map(d_in))  # type: ignore[no-untyped-call]
        if cost <= rho:
            return scale, cost
        scale = _nudge(scale)
    raise PlanRejectedError("could not calibrate the noise scale")  # pragma: no cover


def quantile_measurement(candidates: tuple[float, ...], alpha: float, scale: float) -> dp.Measurement:
    """The zCDP quantile chain: OpenDP's candidate scores, then zCDP noisy min (Gumbel noise)."""
    t = mechanisms.score_transformation(candidates, alpha)
    return t >> mechanisms.noisy_max_measurement(t, scale, zcdp=True)


def calibrate_quantile(c: Component, rho: float) -> tuple[float, float]:
    """Smallest scale whose zCDP chain map(K) is at most `rho`; returns (scale, map)."""
    _check_rho(rho)
    scale = c.sensitivity / math.sqrt(2.0 * rho)  # map = (d / scale)^2 / 2 on these scores
    if not (math.isfinite(scale) and scale > 0):
        raise PlanRejectedError("noise scale is not a positive finite number")
    for _ in range(_NUDGE):
        cost = float(quantile_measurement(c.candidates, c.alpha, scale).map(c.rows))  # type: ignore[no-untyped-call]
        if cost <= rho:
            return scale, cost
        scale = _nudge(scale)
    raise PlanRejectedError("could not calibrate the noise scale")  # pragma: no cover


def threshold_space() -> tuple[Any, Any]:
    """Input space of zCDP partition selection: key (JSON text) -> exact i64 count, l02inf distance."""
    return gaussian_threshold_space()


def calibrate_gaussian_threshold(d_in: int | KeyBound, rho: float, delta: float) -> tuple[float, int, float, float]:
    """Scale and smallest threshold of the Gaussian threshold mechanism at `d_in` = (l0, l2, linf) (an int k
    means (k, k, k)).

    Returns (scale, threshold to run, charged rho, charged delta): the scale is the smallest whose map has
    rho <= `rho`; t, the smallest integer (>= linf) whose map has delta <= `delta` (a galloping search on
    OpenDP's own map; its delta decreases with t). The mechanism runs at t + 1 and is charged OpenDP's map
    at t (`sandbox.pricing.measurements.THRESHOLD_MARGIN`: OpenDP's map is one integer short).

    Raises:
        PlanRejectedError: rho or delta not usable (delta must be in (0, 1)), or delta too small.
    """
    _check_rho(rho)
    if not (math.isfinite(delta) and 0 < delta < 1):
        raise PlanRejectedError("partition selection needs a delta in (0, 1)")
    bound = key_bound(d_in)
    l0, l2, linf = bound
    scale = math.sqrt(min(l2 * l2, l0 * linf * linf) / (2.0 * rho))  # OpenDP's rho at this d_in
    if not (math.isfinite(scale) and scale > 0):
        raise PlanRejectedError("noise scale is not a positive finite number")
    for _ in range(_NUDGE):
        r = float(gaussian_threshold(scale, MAX_THRESHOLD).map(bound)[0])  # type: ignore[no-untyped-call]
        if r <= rho:
            break
        scale = _nudge(scale)
    else:  # pragma: no cover
        raise PlanRejectedError("could not calibrate the selection scale")

    def cost(t: int) -> tuple[float, float]:
        r, d = gaussian_threshold(scale, t).map(bound)  # type: ignore[no-untyped-call]
        return float(r), float(d)

    if cost(MAX_THRESHOLD)[1] > delta:
        raise PlanRejectedError("delta is too small for partition selection")
    # Gaussian tails: delta(t) falls roughly like l0 exp(-((t - linf) / scale)^2 / 2); gallop from there.
    guess = linf + math.ceil(scale * math.sqrt(2 * math.log(l0 / delta)))
    t = mechanisms.smallest_true(lambda t: cost(t)[1] <= delta, linf, MAX_THRESHOLD - THRESHOLD_MARGIN, guess)
    r, d = cost(t)
    return scale, t + THRESHOLD_MARGIN, r, d


def release_threshold(cost: ReleaseCost, counts: dict[str, int]) -> dict[str, int]:
    """Run the Gaussian threshold mechanism `cost` describes on exact per-key counts (sandbox only)."""
    return mechanisms.release_threshold(cost, counts)


def price(plan: QueryPlan, dataset: DatasetInfo, rho: float, delta: float = 0.0) -> tuple[ReleaseCost, ...]:
    """Calibrate every measurement of `plan` for a total of at most `rho` (and `delta`).

    Privacy: each cost's `rho` (and `delta`) is `measurement.map(d_in)` with d_in from
    `mechanisms.components`; its `epsilon` is 0. The query's loss is (sum of rho, sum of delta): zCDP
    composition. Only partition selection spends delta: the component carrying `keys` is OpenDP's
    Gaussian threshold at (l0, l2, linf).
    """
    out: list[ReleaseCost] = []
    for c in mechanisms.components(plan, dataset):
        share = rho * c.share
        if c.keys is not None:
            l0, _, linf = c.keys
            l2 = mechanisms.d_in(True, c.l2)
            assert isinstance(l2, int)
            scale, threshold, r, d = calibrate_gaussian_threshold((l0, l2, linf), share, delta)
            out.append(ReleaseCost(c.aggregate_index, c.component, GAUSSIAN_THRESHOLD, c.l2, scale, 0.0, d,
                                   threshold, r))
            continue
        if c.component == "quantile":
            scale, r = calibrate_quantile(c, share)
            out.append(ReleaseCost(c.aggregate_index, c.component, NOISY_MAX_ZCDP, c.sensitivity, scale, 0.0, rho=r))
            continue
        scale, r = calibrate_gaussian(c.integer, c.l2, share)
        mechanism = DISCRETE_GAUSSIAN if c.integer else GAUSSIAN
        out.append(ReleaseCost(c.aggregate_index, c.component, mechanism, c.l2, scale, 0.0, rho=r))
    return tuple(out)


def total_rho(costs: Sequence[ReleaseCost]) -> float:
    """zCDP composition: the sum of the releases' rho."""
    return math.fsum(c.rho for c in costs)


def accuracy_to_scale(integer: bool, half_width: float, alpha: float = ALPHA) -> float:
    """The Gaussian scale whose (1 - alpha) interval has half-width at most `half_width` (OpenDP's inverse).

    For the discrete Gaussian, OpenDP's inverse and forward accuracy functions differ by one unit (the
    forward one bounds P(|Z| >= a), the inverse P(|Z| > a)); the interval an answer carries is the
    forward one, so the scale is lowered until that is within the target.
    """
    if not integer:
        return float(dp.accuracy_to_gaussian_scale(half_width, alpha))
    if half_width > 3 * mechanisms.EXACT_DISCRETE_GAUSSIAN_SCALE:  # the bound's regime (see half_width)
        scale = float(dp.accuracy_to_gaussian_scale(math.floor(half_width) - 1.0, alpha)) * (1 - 1e-12)
        if scale > mechanisms.EXACT_DISCRETE_GAUSSIAN_SCALE:
            return scale
    target = half_width
    for _ in range(64):
        scale = float(dp.accuracy_to_discrete_gaussian_scale(target, alpha))
        if mechanisms.discrete_gaussian_accuracy(scale, alpha) <= half_width:
            return scale
        target = target - 1.0 if target > 2.0 else target / 2
    raise PlanRejectedError("could not solve the accuracy target")  # pragma: no cover


# -- conversion to (epsilon, delta) ------------------------------------------------------------------

_UNIT = (dp.atom_domain(T=float, nan=False), dp.absolute_distance(T=float))


def _unit_gaussian_d_in(rho: float) -> float:
    """The smallest d_in (to float precision) at which OpenDP's unit-scale Gaussian maps to >= rho."""
    g = dp.m.make_gaussian(*_UNIT, scale=1.0)
    d = math.sqrt(2.0 * rho)
    for _ in range(_NUDGE):
        if float(g.map(d)) >= rho:  # type: ignore[no-untyped-call]
            return d
        d = math.nextafter(d, math.inf)
    raise ValueError("could not represent rho")  # pragma: no cover


def rho_to_epsilon(rho: float, delta: float) -> float:
    """OpenDP's zCDP -> (epsilon, delta) conversion of `rho` at `delta`: `make_fix_delta(
    make_zCDP_to_approxDP(m), delta).map` of a Gaussian `m` whose map is `rho` (never below it).

    0 for rho = 0; infinity when delta <= 0 (no finite epsilon exists)."""
    if not (math.isfinite(rho) and rho >= 0):
        raise ValueError("rho must be finite and non-negative")
    if rho == 0:
        return 0.0
    if not delta > 0:
        return math.inf
    g = dp.m.make_gaussian(*_UNIT, scale=1.0)
    m = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(g), delta)
    eps, _ = m.map(_unit_gaussian_d_in(rho))  # type: ignore[no-untyped-call]
    return float(eps)


def to_approx_dp(rho: float, spent_delta: float, grant_delta: float) -> tuple[float, float]:
    """The (epsilon, delta) equivalent of an approximate-zCDP total (rho, spent_delta) at the grant's delta.

    As OpenDP's `make_fix_delta` does for approximate zCDP: epsilon is the conversion of rho at
    grant_delta - spent_delta, and the delta is grant_delta in total.
    """
    return rho_to_epsilon(rho, grant_delta - spent_delta), grant_delta


def epsilon_to_rho(epsilon: float, delta: float) -> float:
    """The largest rho (to 1e-12 relative) whose conversion at `delta` is at most `epsilon`."""
    if not (math.isfinite(epsilon) and epsilon > 0) or not delta > 0:
        return 0.0
    lo, hi = 0.0, epsilon * epsilon  # the conversion exceeds epsilon^2 / ... well before rho = epsilon^2
    while rho_to_epsilon(hi, delta) <= epsilon:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if rho_to_epsilon(mid, delta) <= epsilon:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * hi:
            break
    return lo
