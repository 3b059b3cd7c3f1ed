"""Pricing and noise: the OpenDP measurements behind every release, shared by gateway and sandbox.

The gateway calls `price` with the public catalog to quote and charge a plan; the sandbox calls the same
function with its own catalog, refuses the plan if the cost exceeds what the gateway authorised, and then
applies `release_vector` to the exact aggregates it computed. The cost charged is always the OpenDP privacy
map of the measurement that produces the release, never a formula of ours.

Privacy model. The privacy unit is the dataset's declared column (a person, an enterprise). Neighbouring
datasets differ by all rows of one unit. The sandbox keeps at most K = `max_rows_per_unit` rows of each unit
per table (truncation done once per data version, independently per unit, so it is stable), and clamps every
aggregated value to the catalog bounds [L, U]. Adding or removing one unit therefore changes

* a vector of counts (over all groups of a public domain, or the single ungrouped count) by at most K in L1,
* a vector of clamped sums by at most K * max(|L|, |U|) in L1,

which is `d_in` of a vector Laplace measurement (`make_laplace` on `l1_distance`; discrete Laplace on i64
for counts and integer sums, OpenDP's float Laplace otherwise). Several aggregates in one query compose
sequentially: the charged epsilon is the sum of the maps (pure DP, basic composition).

Aggregated expressions are clamped to the bounds `sandbox.plans.bounds` derives from the catalog (never to
bounds carried by the plan). K is the per-unit row bound of the plan's relation (`sandbox.plans.relation`:
`max_rows_per_unit` of one table, the product over a join on the unit, e.g. 12 for residents joined
with social_insurance, 1 for a per-unit subquery), and [L, U] are the bounds derived for the (possibly
joined or derived) expression through that relation. Per aggregate kind:

* COUNT(*), COUNT(expr): one count, L1 sensitivity K.
* COUNT(DISTINCT unit): one count of units per cell, L1 sensitivity min(K, cells) (a unit adds at most
  1 to each cell it has rows in, and has rows in at most K cells).
* SUM(expr): one sum, K * max(|L|, |U|). AVG: a sum of (x - c) around the centre c of [L, U]
  (`avg_centre`), sensitivity K * max(c - L, U - c), and a count, half the share each.

Sensitivity arithmetic. An integer component's sensitivity is a Python int computed exactly (K and
integral bounds as ints; K * 2^53 exceeds what a float holds exactly) and passed to OpenDP's i64
measurements as that int, which OpenDP converts to float rounding up; one that does not fit OpenDP's
i64 (above 2^63 - 1) is refused (`SensitivityTooLargeError`). A float component's sensitivity is the
smallest float at or above the exact product of K and the (float) bounds (`float_up`), never below it.
* VAR/STDDEV: count, sum of z and sum of z^2 with z = (x - (L+U)/2) / ((U-L)/2) in [-1, 1]; each has
  sensitivity K and a third of the share; the variance is post-processing.
* QUANTILE (MEDIAN, QUANTILE_CONT/DISC, PERCENTILE_*, MIN = alpha 0, MAX = alpha 1): the point is
  OpenDP's `make_quantile_score_candidates` >> `make_noisy_max(negate=True)` over a grid of at most 1024
  candidates in [L, U]; the charge is that chain's `map(K)`. Each cell is one such release on disjoint
  rows and the map is linear in the number of rows changed, so one charge covers every cell. Its 95%
  interval is a second release, the "interval" component (share `interval_share`, default 1/2 of the
  aggregate's): noisy counts of a ladder of cells around the point, L1 sensitivity K (see
  `sandbox.pricing.quantiles` for the certification argument).

Partition selection (a group key without a public domain): one more share, the "select" component
(aggregate_index -1): OpenDP's `make_laplace_threshold` over per-key row counts at d_in = (K, K, K)
(one unit touches at most K keys and adds at most K rows in all); its threshold is calibrated so the
map's delta is the request's delta. Only the released keys are answered; every other component is
released on them with the sensitivities above (COUNT(DISTINCT unit) then uses K as the cell bound).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import opendp.prelude as dp

from sandbox.errors import PlanRejectedError
from sandbox.plans import bounds
from sandbox.plans.bounds import float_up as float_up  # re-exported: the rounding of float sensitivities
from sandbox.plans.compile import avg_centre, quantile_candidates
from sandbox.plans.relation import key, plan_relation
from sandbox.pricing import quantiles
from sandbox.protocol.catalog import ColumnInfo, DatasetInfo
from sandbox.protocol.plan import BOUNDED_KINDS, VARIANCE_KINDS, Aggregate, AggregateKind, Column, QueryPlan
from sandbox.protocol.release import NoisyValue, ReleaseCost

dp.enable_features("contrib")

DISCRETE_LAPLACE = "discrete_laplace"
LAPLACE = "laplace"
LAPLACE_THRESHOLD = "laplace_threshold"
SELECT = "select"  # the partition-selection component (aggregate_index -1)
MAX_THRESHOLD = 2**40
NOISY_MAX = "noisy_max"
# zCDP grants (sandbox/pricing/zcdp.py prices them; the noise is added here like the Laplace family's).
DISCRETE_GAUSSIAN = "discrete_gaussian"
GAUSSIAN = "gaussian"
GAUSSIAN_THRESHOLD = "gaussian_threshold"
NOISY_MAX_ZCDP = "noisy_max_zcdp"  # make_noisy_max with output measure zCDP (Gumbel noise)
INTEGER_MECHANISMS = frozenset({DISCRETE_LAPLACE, DISCRETE_GAUSSIAN})
GAUSSIAN_MECHANISMS = frozenset({DISCRETE_GAUSSIAN, GAUSSIAN})
CONFIDENCE_LEVEL = 0.95
ALPHA = 1.0 - CONFIDENCE_LEVEL
# Largest exact integer aggregate the i64 path accepts; larger sums go through the float path.
MAX_EXACT_INT = 2**53
# Largest d_in OpenDP's i64 measurements accept.
MAX_I64 = 2**63 - 1


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


def _exact(x: float) -> Fraction:
    return Fraction(x)


@dataclass(frozen=True, slots=True)
class Component:
    """One measurement of a plan before pricing: which aggregate, count or sum, and its sensitivity."""

    aggregate_index: int
    component: str
    integer: bool
    # The d_in: an exact int when `integer` (see the module docstring), else a float never below the exact bound.
    sensitivity: int | float
    share: float  # fraction of the query's epsilon
    candidates: tuple[float, ...] = ()  # quantile components only
    alpha: float = 0.5  # quantile components only
    rows: int = 0  # quantile components only: K, the d_in of the whole chain
    # An L2 bound tighter than `sensitivity` (the L1 bound, always also an L2 bound), for zCDP's
    # Gaussian: COUNT(DISTINCT unit) moves each of at most m cells by 1, so ||v||_2 <= ceil(sqrt(m)).
    l2_sensitivity: int | float | None = None

    @property
    def l2(self) -> int | float:
        """The L2 sensitivity the Gaussian family is calibrated on."""
        return self.sensitivity if self.l2_sensitivity is None else self.l2_sensitivity


def _is_integral(x: float | None) -> bool:
    return x is not None and float(x).is_integer()


def is_integer_sum(col: ColumnInfo) -> bool:
    """True if SUM over `col` is computed exactly on integers (int64 column with integral bounds)."""
    return col.type == "int64" and _is_integral(col.lower) and _is_integral(col.upper)


def aggregate_bounds(agg: Aggregate, table: bounds.Columns) -> tuple[float, float, bool]:
    """The derived bounds of a bounded aggregate's argument, recomputed from `table` (the plan's
    `Relation`, so columns of joined tables and derived per-unit columns have their bounds).

    Raises:
        PlanRejectedError: the argument has no finite bounds.
    """
    derived = None if agg.arg is None else bounds.expression_bounds(agg.arg, table)
    if derived is None:
        raise PlanRejectedError("the aggregated expression has no finite bounds")
    return derived


def plan_cells(plan: QueryPlan, unknown: int) -> int:
    """Number of answered cells (product of the group keys' domain sizes; 1 when ungrouped).

    Under partition selection the cells come from the data, so their number is `unknown` (callers
    pass K: one unit's rows still touch at most K cells)."""
    n = 1
    for g in plan.group_by:
        if g.domain is None:
            return unknown
        n *= len(g.domain)
    return n


def components(plan: QueryPlan, dataset: DatasetInfo) -> tuple[Component, ...]:
    """Split a plan into its measurements with their sensitivities and epsilon shares.

    Raises:
        PlanRejectedError: the plan refers to a table the catalog does not describe, or an aggregate
            has no finite bounds.
    """
    rel = plan_relation(plan, dataset)
    k = rel.k
    # Partition selection takes a share of its own, like one more aggregate (weight 1 unless the
    # consumer weighted `group_keys`).
    selection_weight = plan.selection_weight if plan.partition_selection else 0.0
    total_weight = math.fsum(a.weight for a in plan.aggregates) + selection_weight
    out: list[Component] = []
    if plan.partition_selection:
        for g in plan.group_by:
            if g.domain is not None:
                continue
            if not isinstance(g.expr, Column):
                raise PlanRejectedError(f"group key {g.name!r} without a public domain must be a column")
            gk = key(g.expr)
            key_col = rel.column(gk)
            if key_col is None or key_col.grade == "identifier" or gk in rel.units:
                raise PlanRejectedError(f"group key {gk!r} is unknown or an identifier")
            if key_col.type == "float64":
                raise PlanRejectedError(f"group key {gk!r} is a float; select keys of it cannot")
        # d_in = (l0, l1, linf) = (K, K, K): one unit's <= K rows touch <= K keys, add <= K in all.
        out.append(Component(-1, SELECT, True, integer_sensitivity(k), selection_weight / total_weight))
    for i, agg in enumerate(plan.aggregates):
        share = agg.weight / total_weight
        if agg.kind in (AggregateKind.COUNT, AggregateKind.COUNT_COLUMN):
            out.append(Component(i, "count", True, integer_sensitivity(k), share))
            continue
        if agg.kind is AggregateKind.COUNT_DISTINCT_UNIT:
            # A unit adds at most 1 to each cell it has rows in, and it has at most K rows in the
            # (possibly joined) relation, so it touches at most min(K, cells) cells.
            m = min(k, plan_cells(plan, k))
            root = math.isqrt(m)
            l2 = root if root * root == m else root + 1  # ceil(sqrt(m)): OpenDP's i64 L2 distance is integral
            out.append(Component(i, "count", True, integer_sensitivity(m), share, l2_sensitivity=l2))
            continue
        assert agg.kind in BOUNDED_KINDS
        lo, hi, integer = aggregate_bounds(agg, rel)
        if agg.kind is AggregateKind.QUANTILE:
            assert agg.quantile is not None
            cands = quantile_candidates(lo, hi, integer)
            d_score = float(score_transformation(cands, agg.quantile).map(k))  # type: ignore[no-untyped-call]
            f = quantiles.DEFAULT_INTERVAL_SHARE if agg.interval_share is None else agg.interval_share
            out.append(Component(i, "quantile", True, d_score, share * (1.0 - f), cands, agg.quantile, k))
            if f > 0:  # the interval's ladder counts: every row in exactly one cell, L1 sensitivity K
                out.append(Component(i, quantiles.INTERVAL, True, integer_sensitivity(k), share * f))
            continue
        if agg.kind in VARIANCE_KINDS:  # z and z^2 in [-1, 1]: K per unit (the sums are floats)
            out.append(Component(i, "count", True, integer_sensitivity(k), share / 3))
            for comp in ("sum", "sumsq"):
                out.append(Component(i, comp, False, float_up(k), share / 3))
            continue
        if agg.kind is AggregateKind.SUM:
            out.append(Component(i, "sum", integer, sum_sensitivity(k, lo, hi, integer), share))
        else:  # AVG: a noisy centred sum and a noisy count, each with half of the aggregate's share
            centre = avg_centre(lo, hi, integer)
            out.append(Component(i, "sum", integer, centred_sensitivity(k, lo, hi, centre, integer),
                                 share / 2))
            out.append(Component(i, "count", True, integer_sensitivity(k), share / 2))
    return tuple(out)


def sum_sensitivity(k: int, lo: float, hi: float, integer: bool) -> int | float:
    """L1 sensitivity of a sum of at most `k` values per unit in [lo, hi]: K * max(|L|, |U|).

    Exact on ints when `integer` (the bounds are then integral); otherwise rounded up to a float.
    """
    if integer:
        return integer_sensitivity(k * max(abs(int(lo)), abs(int(hi))))
    return float_up(k * max(abs(_exact(lo)), abs(_exact(hi))))


def centred_sensitivity(k: int, lo: float, hi: float, centre: float, integer: bool) -> int | float:
    """L1 sensitivity of AVG's centred sum, sum(x - c) over at most `k` values per unit in [lo, hi]:
    K * max(c - L, U - c), exact on ints when `integer`, otherwise rounded up to a float."""
    if integer:
        c = int(centre)
        return integer_sensitivity(k * max(c - int(lo), int(hi) - c))
    c_x = _exact(centre)
    return float_up(k * max(c_x - _exact(lo), _exact(hi) - c_x))


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


def calibrate_quantile(c: Component, epsilon: float) -> tuple[float, float]:
    """Smallest scale whose chain map(K) is at most `epsilon`; returns (scale, map)."""
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise PlanRejectedError("epsilon must be finite and positive")
    scale = 2.0 * c.sensitivity / epsilon
    if not (math.isfinite(scale) and scale > 0):
        raise PlanRejectedError("noise scale is not a positive finite number")
    for _ in range(64):
        cost = float(quantile_measurement(c.candidates, c.alpha, scale).map(c.rows))  # type: ignore[no-untyped-call]
        if cost <= epsilon:
            return scale, cost
        scale = math.nextafter(scale, math.inf) * (1 + 1e-15)
    raise PlanRejectedError("could not calibrate the noise scale")  # pragma: no cover


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


def calibrate_threshold(k: int, epsilon: float, delta: float) -> tuple[float, int, float, float]:
    """Scale and smallest threshold of the Laplace threshold mechanism at d_in = (k, k, k).

    The scale is the smallest whose map has epsilon <= `epsilon`; the threshold the smallest integer
    (>= k) whose map has delta <= `delta` (a galloping search over OpenDP's own map; delta decreases with the
    threshold). Returns (scale, threshold, map epsilon, map delta).

    Raises:
        PlanRejectedError: epsilon or delta not usable (delta must be in (0, 1)).
    """
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise PlanRejectedError("epsilon must be finite and positive")
    if not (math.isfinite(delta) and 0 < delta < 1):
        raise PlanRejectedError("partition selection needs a delta in (0, 1)")
    d_in = (k, k, k)
    scale = k / epsilon
    for _ in range(64):
        eps = float(make_threshold(scale, MAX_THRESHOLD).map(d_in)[0])  # type: ignore[no-untyped-call]
        if eps <= epsilon:
            break
        scale = math.nextafter(scale, math.inf) * (1 + 1e-15)
    else:  # pragma: no cover
        raise PlanRejectedError("could not calibrate the selection scale")

    def cost(t: int) -> tuple[float, float]:
        e, d = make_threshold(scale, t).map(d_in)  # type: ignore[no-untyped-call]
        return float(e), float(d)

    if cost(MAX_THRESHOLD)[1] > delta:
        raise PlanRejectedError("delta is too small for partition selection")
    # delta(t) falls roughly like exp(-(t - k) / scale): start there, then gallop and bisect on OpenDP's
    # own map (about 6 maps instead of the 40 of a bisection over [k, 2^40]; the same smallest t).
    guess = k + math.ceil(scale * math.log(1 / delta))
    t = smallest_true(lambda t: cost(t)[1] <= delta, k, MAX_THRESHOLD, guess)
    e, d = cost(t)
    return scale, t, e, d


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


def release_threshold(cost: ReleaseCost, counts: dict[str, int]) -> dict[str, int]:
    """Run the threshold mechanism `cost` describes on exact per-key counts (inside the sandbox)."""
    for v in counts.values():
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < MAX_EXACT_INT:
            raise ValueError("exact key counts must be non-negative integers")
    out = make_threshold(cost.scale, cost.threshold)(counts)
    return {str(k): int(v) for k, v in out.items()}


def price(
    plan: QueryPlan, dataset: DatasetInfo, epsilon: float, delta: float = 0.0
) -> tuple[ReleaseCost, ...]:
    """Calibrate every measurement of `plan` for a total of at most (`epsilon`, `delta`).

    Privacy: the returned `epsilon` (and `delta`) of each cost is `measurement.map(d_in)` with d_in the
    sensitivity from `components`; their sum is the query's privacy loss under basic composition. Only
    partition selection spends delta (all of it).
    """
    out: list[ReleaseCost] = []
    for c in components(plan, dataset):
        if c.component == SELECT:
            k = int(c.sensitivity)
            scale, threshold, eps, dlt = calibrate_threshold(k, epsilon * c.share, delta)
            out.append(
                ReleaseCost(
                    aggregate_index=-1,
                    component=SELECT,
                    mechanism=LAPLACE_THRESHOLD,
                    sensitivity=c.sensitivity,
                    scale=scale,
                    epsilon=eps,
                    delta=dlt,
                    threshold=threshold,
                )
            )
            continue
        if c.component == "quantile":
            scale, cost = calibrate_quantile(c, epsilon * c.share)
            mechanism = NOISY_MAX
        else:
            scale, cost = calibrate(c.integer, c.sensitivity, epsilon * c.share)
            mechanism = mechanism_name(c.integer)
        out.append(
            ReleaseCost(
                aggregate_index=c.aggregate_index,
                component=c.component,
                mechanism=mechanism,
                sensitivity=c.sensitivity,
                scale=scale,
                epsilon=cost,
            )
        )
    return tuple(out)


def total_epsilon(costs: Sequence[ReleaseCost]) -> float:
    """Sequential composition of pure-DP releases: the sum of their epsilons."""
    return math.fsum(c.epsilon for c in costs)


def total_delta(costs: Sequence[ReleaseCost]) -> float:
    """Basic composition of approximate-DP releases: the sum of their deltas."""
    return math.fsum(c.delta for c in costs)


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
    """Standard deviation of the noise: sqrt(2)*scale (Laplace); the exact discrete Laplace formula."""
    if cost.mechanism in (NOISY_MAX, NOISY_MAX_ZCDP):
        return cost.scale
    if cost.mechanism in GAUSSIAN_MECHANISMS:
        return cost.scale  # the discrete Gaussian's is at most its scale (CKS20, Prop. 19)
    if cost.mechanism == DISCRETE_LAPLACE:
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
