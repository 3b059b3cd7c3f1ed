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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import opendp.prelude as dp

from sandbox.errors import PlanRejectedError
from sandbox.protocol import (
    AggregateKind,
    ColumnInfo,
    DatasetInfo,
    NoisyValue,
    QueryPlan,
    ReleaseCost,
)
from sandbox.relation import Relation, plan_relation

dp.enable_features("contrib")

DISCRETE_LAPLACE = "discrete_laplace"
LAPLACE = "laplace"
LAPLACE_THRESHOLD = "laplace_threshold"
SELECT = "select"  # the partition-selection component (aggregate_index -1)
MAX_THRESHOLD = 2**40
CONFIDENCE_LEVEL = 0.95
ALPHA = 1.0 - CONFIDENCE_LEVEL
# Largest exact integer aggregate the i64 path accepts; larger sums go through the float path.
MAX_EXACT_INT = 2**53


@dataclass(frozen=True, slots=True)
class Component:
    """One measurement of a plan before pricing: which aggregate, count or sum, and its sensitivity."""

    aggregate_index: int
    component: str
    integer: bool
    sensitivity: float
    share: float  # fraction of the query's epsilon


def _is_integral(x: float | None) -> bool:
    return x is not None and float(x).is_integer()


def is_integer_sum(col: ColumnInfo) -> bool:
    """True if SUM over `col` is computed exactly on integers (int64 column with integral bounds)."""
    return col.type == "int64" and _is_integral(col.lower) and _is_integral(col.upper)


def components(plan: QueryPlan, dataset: DatasetInfo) -> tuple[Component, ...]:
    """Split a plan into its measurements with their L1 sensitivities and epsilon shares.

    Raises:
        PlanRejectedError: the plan refers to a table or column the catalog does not describe for this use.
    """
    rel = plan_relation(plan, dataset)
    k = rel.k
    # Partition selection takes one share of its own, like one more aggregate.
    total_weight = math.fsum(a.weight for a in plan.aggregates) + (
        1.0 if plan.partition_selection else 0.0
    )
    out: list[Component] = []
    if plan.partition_selection:
        for g in plan.group_by:
            key_col = rel.column(g)
            if key_col is None or key_col.grade == "identifier" or g in rel.units:
                raise PlanRejectedError(f"group key {g!r} is unknown or an identifier")
            if key_col.type == "float64":
                raise PlanRejectedError(f"group key {g!r} is a float; select keys of it cannot")
        # d_in = (l0, l1, linf) = (K, K, K): one unit's <= K rows touch <= K keys, add <= K in all.
        out.append(Component(-1, SELECT, True, float(k), 1.0 / total_weight))
    for i, agg in enumerate(plan.aggregates):
        share = agg.weight / total_weight
        if agg.kind in (AggregateKind.COUNT, AggregateKind.COUNT_COLUMN):
            if agg.column is not None:
                _column(_lookup(rel, agg.column), agg.column, numeric=False)
            out.append(Component(i, "count", True, float(k), share))
            continue
        assert agg.column is not None
        col = _column(_lookup(rel, agg.column), agg.column, numeric=True)
        assert col.lower is not None and col.upper is not None
        bound = max(abs(col.lower), abs(col.upper))
        integer = is_integer_sum(col)
        if agg.kind is AggregateKind.SUM:
            out.append(Component(i, "sum", integer, k * bound, share))
        else:  # AVG: a noisy sum and a noisy count, each with half of the aggregate's share
            out.append(Component(i, "sum", integer, k * bound, share / 2))
            out.append(Component(i, "count", True, float(k), share / 2))
    return tuple(out)


def _lookup(rel: Relation, name: str) -> ColumnInfo | None:
    if name in rel.units:  # the privacy unit is only usable in join conditions
        return ColumnInfo(name, "int64", "identifier")
    return rel.column(name)


def _column(col: ColumnInfo | None, name: str, *, numeric: bool) -> ColumnInfo:
    if col is None:
        raise PlanRejectedError(f"unknown column {name!r}")
    if col.grade == "identifier":
        raise PlanRejectedError(f"column {name!r} is an identifier and cannot be aggregated")
    if numeric and (
        col.type not in ("int64", "float64") or col.lower is None or col.upper is None
    ):
        raise PlanRejectedError(f"column {name!r} has no declared numeric bounds")
    return col


def make_measurement(integer: bool, scale: float) -> dp.Measurement:
    """The vector Laplace measurement (discrete on i64 when `integer`) at `scale`.

    Privacy: input metric is L1 distance between aggregate vectors; map(d_in) = d_in / scale (as OpenDP
    computes it, with its own rounding slack).
    """
    if integer:
        space = dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64")
    else:
        space = dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.l1_distance(T=float)
    return dp.m.make_laplace(*space, scale=scale)


def _d_in(integer: bool, sensitivity: float) -> int | float:
    return int(sensitivity) if integer else float(sensitivity)


def calibrate(integer: bool, sensitivity: float, epsilon: float) -> tuple[float, float]:
    """Smallest scale (to float precision) whose OpenDP map is at most `epsilon`; returns (scale, map).

    Raises:
        PlanRejectedError: epsilon is not finite and positive, or the scale is not usable.
    """
    if not (math.isfinite(epsilon) and epsilon > 0):
        raise PlanRejectedError("epsilon must be finite and positive")
    d_in = _d_in(integer, sensitivity)
    scale = sensitivity / epsilon
    if not (math.isfinite(scale) and scale > 0):
        raise PlanRejectedError("noise scale is not a positive finite number")
    for _ in range(64):
        cost = float(make_measurement(integer, scale).map(d_in))  # type: ignore[no-untyped-call]
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
    (>= k) whose map has delta <= `delta` (binary search over OpenDP's own map; delta decreases with the
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

    lo, hi = k, MAX_THRESHOLD
    if cost(hi)[1] > delta:
        raise PlanRejectedError("delta is too small for partition selection")
    while lo < hi:  # smallest t in [k, MAX] with delta(t) <= delta
        mid = (lo + hi) // 2
        if cost(mid)[1] <= delta:
            hi = mid
        else:
            lo = mid + 1
    e, d = cost(lo)
    return scale, lo, e, d


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
        scale, cost = calibrate(c.integer, c.sensitivity, epsilon * c.share)
        out.append(
            ReleaseCost(
                aggregate_index=c.aggregate_index,
                component=c.component,
                mechanism=mechanism_name(c.integer),
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


def half_width(cost: ReleaseCost, alpha: float = ALPHA) -> float:
    """Half-width of the (1 - alpha) interval of one noisy value, from OpenDP's accuracy functions."""
    if cost.mechanism in (DISCRETE_LAPLACE, LAPLACE_THRESHOLD):
        return float(dp.discrete_laplacian_scale_to_accuracy(cost.scale, alpha))
    return float(dp.laplacian_scale_to_accuracy(cost.scale, alpha))


def stddev(cost: ReleaseCost) -> float:
    """Standard deviation of the noise: sqrt(2)*scale (Laplace); the exact discrete Laplace formula."""
    if cost.mechanism == DISCRETE_LAPLACE:
        q = math.exp(-1.0 / cost.scale)
        return math.sqrt(2 * q) / (1 - q)
    return math.sqrt(2.0) * cost.scale


def release_vector(cost: ReleaseCost, exact: Sequence[int | float]) -> list[int | float]:
    """Add the calibrated noise to a vector of exact aggregates (inside the sandbox only).

    Every input must be finite (and within i64 for the discrete path): OpenDP's Laplace does not check
    (NaN is read as 0, infinity comes back without noise), so a bad input is a bug and raises ValueError.

    Privacy: the same measurement `price` mapped; the caller has clamped and truncated so that the L1
    distance between neighbouring vectors is at most `cost.sensitivity`.
    """
    integer = cost.mechanism == DISCRETE_LAPLACE
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
    meas = make_measurement(integer, cost.scale)
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
) -> NoisyValue:
    """AVG as post-processing of a noisy sum and a noisy count, with an honest 95% interval.

    The interval: with probability at least 97.5% each, the true sum lies in noisy_sum +- a_s and the true
    count in noisy_count +- a_c (OpenDP accuracy at alpha = 0.025); by the union bound both hold with
    probability at least 95%, and then the true average lies in the range of s/c over that box,
    intersected with [lower, upper]. If the count box reaches zero the interval is [lower, upper].
    The point estimate is noisy_sum / max(noisy_count, 1), clamped to [lower, upper].
    """
    a_s = half_width(sum_cost, ALPHA / 2)
    a_c = half_width(count_cost, ALPHA / 2)
    s_lo, s_hi = noisy_sum - a_s, noisy_sum + a_s
    c_lo, c_hi = max(noisy_count - a_c, 0.0), noisy_count + a_c
    if c_lo < 1.0:
        lo, hi = lower, upper
    else:
        candidates = [s_lo / c_lo, s_lo / c_hi, s_hi / c_lo, s_hi / c_hi]
        lo, hi = max(lower, min(candidates)), min(upper, max(candidates))
        if lo > hi:  # the box lies outside the bounds entirely; the bounds still hold the truth
            lo, hi = lower, upper
    value = min(max(noisy_sum / max(noisy_count, 1.0), lower), upper)
    # Delta-method standard deviation of s/c, for information; the interval above is the guarantee.
    c = max(noisy_count, 1.0)
    sd = math.sqrt((stddev(sum_cost) / c) ** 2 + (value * stddev(count_cost) / c) ** 2)
    return NoisyValue(
        value=float(value),
        mechanism=f"{sum_cost.mechanism}/{count_cost.mechanism}",
        scale=sum_cost.scale,
        stddev=sd,
        ci_lower=float(lo),
        ci_upper=float(hi),
    )
