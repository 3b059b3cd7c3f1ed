"""The OpenDP measurements behind every release, and their calibration (pure: no data).

Each function builds or calibrates one OpenDP measurement; the charged cost of a release is always that
measurement's privacy map at the release's d_in (`sandbox.pricing.components` derives the d_in), never a
formula of ours. Calibration searches for the smallest scale (and, for the threshold mechanisms, the
smallest threshold) whose map fits the share of the loss, asking OpenDP's own map at every step.

* Vector Laplace (`make_laplace` on `l1_distance`; discrete Laplace on i64 for counts and integer sums,
  OpenDP's float Laplace otherwise) and vector Gaussian (`make_gaussian` on `l2_distance`, zCDP).
* Quantiles: `make_quantile_score_candidates` >> `make_noisy_max(negate=True)`.
* Partition selection: `make_laplace_threshold` (approximate DP) over a map key -> exact i64 count with
  `l01inf_distance`, whose d_in is (l0, l1, linf): how many keys one unit's rows can touch, by how much
  in all, and by how much in one key. OpenDP's map is (min(l1, l0 * linf) / scale, delta(threshold,
  l0, linf)), charged at one below the threshold it runs at (`THRESHOLD_MARGIN`). Its zCDP sibling is
  `make_gaussian_threshold`, priced in `sandbox.pricing.zcdp`.

Sensitivity arithmetic. An integer d_in is a Python int computed exactly and passed to OpenDP's i64
measurements as that int; one above 2^63 - 1 is refused (`SensitivityTooLargeError`). A float d_in is
never below the exact bound (`sandbox.plans.bounds.float_up`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import opendp.prelude as dp

from sandbox.errors import PlanRejectedError
from sandbox.plans.bounds import float_up

dp.enable_features("contrib")

DISCRETE_LAPLACE = "discrete_laplace"
LAPLACE = "laplace"
LAPLACE_THRESHOLD = "laplace_threshold"
MAX_THRESHOLD = 2**40
NOISY_MAX = "noisy_max"
# zCDP grants (sandbox/pricing/zcdp.py prices them; the noise is added like the Laplace family's).
DISCRETE_GAUSSIAN = "discrete_gaussian"
GAUSSIAN = "gaussian"
GAUSSIAN_THRESHOLD = "gaussian_threshold"
NOISY_MAX_ZCDP = "noisy_max_zcdp"  # make_noisy_max with output measure zCDP (Gumbel noise)
INTEGER_MECHANISMS = frozenset({DISCRETE_LAPLACE, DISCRETE_GAUSSIAN})
GAUSSIAN_MECHANISMS = frozenset({DISCRETE_GAUSSIAN, GAUSSIAN})
# The threshold mechanisms: noisy per-key counts of the keys they keep (partition selection).
THRESHOLD_MECHANISMS = frozenset({LAPLACE_THRESHOLD, GAUSSIAN_THRESHOLD})
CONFIDENCE_LEVEL = 0.95
ALPHA = 1.0 - CONFIDENCE_LEVEL
# Largest d_in OpenDP's i64 measurements accept.
MAX_I64 = 2**63 - 1

# The d_in of a threshold mechanism: (l0, l1, linf) for the Laplace one, (l0, l2, linf) for the Gaussian.
KeyBound = tuple[int, int, int]
# OpenDP 0.16's threshold mechanisms keep a key when its noisy count is >= the threshold T, but their
# privacy maps bound the probability that a key only one neighbour has passes by the noise's tail
# P(Z > T - linf), one integer short of the P(Z >= T - linf) the mechanism has (opendp/opendp#2922;
# the Laplace and the Gaussian alike, measured in tests/statistical/test_selection_audit.py). The map
# OpenDP computes at T therefore bounds the delta of the mechanism run at T + 1 exactly: keys pass there
# when Z >= T + 1 - linf, i.e. Z > T - linf. So every threshold mechanism runs at one above the threshold
# whose OpenDP map is charged (`ReleaseCost.threshold` is the one run).
THRESHOLD_MARGIN = 1


class SensitivityTooLargeError(PlanRejectedError):
    """An integer sensitivity beyond OpenDP's i64 (decided from the plan and the catalog only)."""


def integer_sensitivity(x: int) -> int:
    """`x` as an i64 d_in for OpenDP, exactly.

    Raises:
        SensitivityTooLargeError: `x` exceeds 2^63 - 1 (OpenDP cannot represent it; rounding it down
            would under-price the release).
    """
    if x > MAX_I64:
        raise SensitivityTooLargeError(
            f"the sensitivity {x} exceeds 2^63 - 1; narrow the aggregated expression's bounds "
            "(for example with CLAMP) or read fewer rows per unit"
        )
    return x


_F64 = dp.vector_domain(dp.atom_domain(T=float, nan=False))


def score_transformation(candidates: tuple[float, ...], alpha: float) -> dp.Transformation:
    """OpenDP's quantile scoring over `candidates` (symmetric distance -> LInf on u64 scores)."""
    return dp.t.make_quantile_score_candidates(
        _F64, dp.symmetric_distance(), list(candidates), alpha
    )


def quantile_measurement(candidates: tuple[float, ...], alpha: float, scale: float) -> dp.Measurement:
    """The whole chain the charge is computed from: score candidates, then noisy min (report-noisy-max
    with negated scores, the exponential mechanism / permute-and-flip family)."""
    t = score_transformation(candidates, alpha)
    return t >> noisy_max_measurement(t, scale)


def noisy_max_measurement(t: dp.Transformation, scale: float, *, zcdp: bool = False) -> dp.Measurement:
    """`make_noisy_max(negate=True)` on the output space of the score transformation `t`
    (pure DP; with `zcdp`, OpenDP's zCDP variant, which uses Gumbel noise)."""
    measure = dp.zero_concentrated_divergence() if zcdp else dp.max_divergence()
    return dp.m.make_noisy_max(t.output_domain, t.output_metric, measure, scale=scale, negate=True)


_ALPHA_FRACTIONS: dict[float, tuple[int, int]] = {}


def alpha_fraction(alpha: float) -> tuple[int, int]:
    """(numerator, denominator) OpenDP uses for `alpha`, read from OpenDP itself.

    OpenDP scores candidate c as |den * #(x < c) - num * (n - #(x = c))|. On one value above a single
    candidate the score is num; on one value below it is den - num.
    """
    if alpha not in _ALPHA_FRACTIONS:
        t = score_transformation((0.0,), alpha)
        num = int(t([1.0])[0])
        below = int(t([-1.0])[0])
        _ALPHA_FRACTIONS[alpha] = (num, num + below)
    return _ALPHA_FRACTIONS[alpha]


def quantile_scores(counts: list[int], alpha: float) -> list[int]:
    """OpenDP's quantile scores rebuilt from per-candidate counts of values snapped to the grid.

    `counts[j]` is how many values equal candidate j; then #(x < c_j) = sum(counts[:j]) and
    #(x = c_j) = counts[j], and the score is exactly `make_quantile_score_candidates`'s (a unit test
    checks equality on random data).
    """
    num, den = alpha_fraction(alpha)
    n = sum(counts)
    out: list[int] = []
    below = 0
    for c in counts:
        out.append(abs(den * below - num * (n - c)))
        below += c
    return out


@functools.cache
def _noise_space(integer: bool, gaussian: bool) -> tuple[Any, Any]:
    """The input space of the vector Laplace (L1) or Gaussian (L2), built once per process: building it
    costs about 0.3 ms of OpenDP calls, 80% of a measurement's construction, and pricing plus release build
    several per request. Domains and metrics are immutable descriptors, safe to share between threads."""
    distance = dp.l2_distance if gaussian else dp.l1_distance
    if integer:
        return dp.vector_domain(dp.atom_domain(T="i64")), distance(T="i64")
    return dp.vector_domain(dp.atom_domain(T=float, nan=False)), distance(T=float)


@functools.lru_cache(maxsize=512)
def make_measurement(integer: bool, scale: float, *, gaussian: bool = False) -> dp.Measurement:
    """The vector Laplace measurement (discrete on i64 when `integer`) at `scale`.

    Memoized (a measurement is an immutable, data-independent descriptor; invoking it draws fresh noise
    each time): the release reuses the one its calibration just built, and a repeated epsilon reuses it.

    Privacy: input metric is L1 distance between aggregate vectors; map(d_in) = d_in / scale (as OpenDP
    computes it, with its own rounding slack). With `gaussian`: OpenDP's (discrete on i64) Gaussian on
    L2 distance, a zCDP measurement with map(d_in) = d_in^2 / (2 scale^2) (see `sandbox.pricing.zcdp`).
    """
    if gaussian:
        return dp.m.make_gaussian(*_noise_space(integer, True), scale=scale)
    return dp.m.make_laplace(*_noise_space(integer, False), scale=scale)


def d_in(integer: bool, sensitivity: int | float) -> int | float:
    """The d_in OpenDP's measurement takes: the exact int on the integer path (a float sensitivity there
    must be integral, and is read exactly), a float otherwise.

    Raises:
        SensitivityTooLargeError: an integer sensitivity beyond 2^63 - 1.
        PlanRejectedError: a fractional sensitivity on the integer path.
    """
    if integer:
        if isinstance(sensitivity, float):
            if not (math.isfinite(sensitivity) and sensitivity.is_integer()):
                raise PlanRejectedError("an integer mechanism needs an integral sensitivity")
            sensitivity = int(sensitivity)
        return integer_sensitivity(sensitivity)
    return float_up(sensitivity) if isinstance(sensitivity, int) else float(sensitivity)


def calibrate(integer: bool, sensitivity: int | float, epsilon: float) -> tuple[float, float]:
    """Smallest scale (to float precision) whose OpenDP map at `d_in(integer, sensitivity)` is at most
    `epsilon`; returns (scale, map).

    Raises:
        PlanRejectedError: epsilon is not finite and positive, the sensitivity is not usable
            (`d_in`), or the scale is not usable.
    """
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise PlanRejectedError("epsilon must be finite and positive")
    d_in_ = d_in(integer, sensitivity)
    scale = d_in_ / epsilon
    if not (math.isfinite(scale) and scale > 0):
        raise PlanRejectedError("noise scale is not a positive finite number")
    for _ in range(64):
        cost = float(make_measurement(integer, scale).map(d_in_))  # type: ignore[no-untyped-call]
        if cost <= epsilon:
            return scale, cost
        scale = math.nextafter(scale, math.inf) * (1 + 1e-15)
    raise PlanRejectedError("could not calibrate the noise scale")  # pragma: no cover


def accuracy_to_scale(integer: bool, half_width: float, alpha: float = ALPHA) -> float:
    """The noise scale whose (1 - alpha) interval has half-width `half_width` (OpenDP's accuracy inverse)."""
    if integer:
        return float(dp.accuracy_to_discrete_laplacian_scale(half_width, alpha))
    return float(dp.accuracy_to_laplacian_scale(half_width, alpha))


def mechanism_name(integer: bool) -> str:
    """Public name of the mechanism used for a component."""
    return DISCRETE_LAPLACE if integer else LAPLACE


@functools.cache  # built once: calibrate_threshold constructs several measurements on it
def threshold_space() -> tuple[Any, Any]:
    """Input space of partition selection: map of key (JSON text) -> exact i64 count, l01inf."""
    return (
        dp.map_domain(dp.atom_domain(T=str), dp.atom_domain(T="i64")),
        dp.l01inf_distance(dp.absolute_distance(T="i64")),
    )


def make_threshold(scale: float, threshold: int) -> dp.Measurement:
    """OpenDP's Laplace threshold mechanism: noisy counts, only keys at or above `threshold` kept."""
    return dp.m.make_laplace_threshold(*threshold_space(), scale=scale, threshold=threshold)


@functools.cache
def gaussian_threshold_space() -> tuple[Any, Any]:
    """Input space of zCDP partition selection: key (JSON text) -> exact i64 count, l02inf distance."""
    return (
        dp.map_domain(dp.atom_domain(T=str), dp.atom_domain(T="i64")),
        dp.l02inf_distance(dp.absolute_distance(T="i64")),
    )


def gaussian_threshold(scale: float, threshold: int) -> dp.Measurement:
    """OpenDP's Gaussian threshold mechanism (approximate zCDP): noisy counts of the keys at or above it.
    Its map at (l0, l2, linf) is (min(l2^2, l0 linf^2) / (2 scale^2), delta(threshold, l0, linf))."""
    return dp.m.make_gaussian_threshold(*gaussian_threshold_space(), scale=scale, threshold=threshold)


def calibrate_threshold(d_in: int | KeyBound, epsilon: float, delta: float) -> tuple[float, int, float, float]:
    """Scale and threshold of the Laplace threshold mechanism at `d_in` = (l0, l1, linf) (an int k means
    (k, k, k)); returns (scale, threshold to run, charged epsilon, charged delta).

    The scale is the smallest whose map has epsilon <= `epsilon`; t, the smallest integer (>= linf) whose
    map has delta <= `delta` (a galloping search over OpenDP's own map; delta decreases with t). The
    mechanism then runs at threshold t + 1 and is charged OpenDP's map at t (`THRESHOLD_MARGIN`).

    Raises:
        PlanRejectedError: epsilon or delta not usable (delta must be in (0, 1)), or delta too small.
    """
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise PlanRejectedError("epsilon must be finite and positive")
    if not (math.isfinite(delta) and 0 < delta < 1):
        raise PlanRejectedError("partition selection needs a delta in (0, 1)")
    bound = key_bound(d_in)
    l0, l1, linf = bound
    scale = min(l1, l0 * linf) / epsilon  # OpenDP's epsilon is min(l1, l0 * linf) / scale
    if not (math.isfinite(scale) and scale > 0):
        raise PlanRejectedError("noise scale is not a positive finite number")
    for _ in range(64):
        eps = float(make_threshold(scale, MAX_THRESHOLD).map(bound)[0])  # type: ignore[no-untyped-call]
        if eps <= epsilon:
            break
        scale = math.nextafter(scale, math.inf) * (1 + 1e-15)
    else:  # pragma: no cover
        raise PlanRejectedError("could not calibrate the selection scale")

    def cost(t: int) -> tuple[float, float]:
        e, d = make_threshold(scale, t).map(bound)  # type: ignore[no-untyped-call]
        return float(e), float(d)

    if cost(MAX_THRESHOLD)[1] > delta:
        raise PlanRejectedError("delta is too small for partition selection")
    # delta(t) falls roughly like l0 exp(-(t - linf) / scale): start there, then gallop and bisect on
    # OpenDP's own map (about 6 maps instead of the 40 of a bisection over [linf, 2^40]; the same smallest t).
    guess = linf + math.ceil(scale * math.log(l0 / delta))
    t = smallest_true(lambda t: cost(t)[1] <= delta, linf, MAX_THRESHOLD - THRESHOLD_MARGIN, guess)
    e, d = cost(t)
    return scale, t + THRESHOLD_MARGIN, e, d


def key_bound(d_in: int | KeyBound) -> KeyBound:
    """A threshold mechanism's d_in as (l0, l1 or l2, linf), each a positive int (an int k: (k, k, k)).

    Raises:
        PlanRejectedError: a part is not a positive int, or is beyond OpenDP's i64.
    """
    bound = (d_in, d_in, d_in) if isinstance(d_in, int) else d_in
    if len(bound) != 3 or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 1 for x in bound):
        raise PlanRejectedError("a threshold mechanism needs a positive integer bound")
    l0, l12, linf = (integer_sensitivity(x) for x in bound)
    return l0, l12, linf


def smallest_true(pred: Callable[[int], bool], lo: int, hi: int, guess: int) -> int:
    """The smallest t in [lo, hi] with `pred(t)`, for a monotone `pred` (False, then True) with `pred(hi)`.

    Gallops from `guess` (doubling steps) to bracket the change, then bisects the bracket: the answer
    does not depend on the guess, only the number of calls does (O(log |answer - guess|)).
    """
    t = min(max(guess, lo), hi)
    step = 1
    if pred(t):
        true_at = t
        while true_at > lo:
            cand = max(true_at - step, lo)
            if not pred(cand):
                lo = cand + 1
                break
            true_at, step = cand, step * 2
        else:
            return lo
        hi = true_at
    else:
        false_at = t
        while True:
            cand = min(false_at + step, hi)
            if pred(cand):
                break
            false_at, step = cand, step * 2
        lo, hi = false_at + 1, cand
    while lo < hi:
        mid = (lo + hi) // 2
        if pred(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


