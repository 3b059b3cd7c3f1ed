"""How a plan with private group keys selects them: which release decides the keys, and the shares.

Pure (no data): shared by the compiler (which per-key count the SQL computes) and pricing (the
epsilon or rho shares), so both sides of the boundary derive the same thing from the plan alone.

Partition selection releases only the keys whose noisy per-key count passes a threshold calibrated from
delta (OpenDP's `make_laplace_threshold` / `make_gaussian_threshold`, which release the noisy counts of
the keys they keep). Two ways to use it:

* **On a count the query asks for** (`key_count` is not None): when the plan has a count component --
  COUNT(*), COUNT(DISTINCT unit), COUNT(expr), or the count inside AVG or VAR/STDDEV -- the threshold
  mechanism runs on that count, and its noisy counts ARE the released values of that component. The
  same noise serves both purposes, as in OpenDP's stable key release and Google's DP library, so a
  private-key query's error matches a public-key query's at the same loss, up to the keys dropped.
* **Separately** (`key_count` is None): a plan without any count (SUM, quantiles only) spends a share
  of its own on the threshold mechanism over per-key row counts (the "select" component, aggregate
  index -1) and throws those counts away.

Shares. Let W be the sum of the aggregates' weights and w_s the plan's `selection_weight` (1 unless the
consumer weighted `group_keys`). Separately, selection gets w_s / (W + w_s) and each component its
weight / (W + w_s). On a count of weight w_c (an AVG's count has half the AVG's weight, a variance's count
a third), the count's weight is raised by

    x = max(0, w_s - w_c - w_c * w_s / W)

and every share is weight / (W + x). With x as small as possible such that (w_c + x) / (W + x) >=
w_s / (W + w_s), the threshold runs at no smaller a share than separate selection would have (so its
threshold is no higher and no more keys drop for the same data), the count's own noise is smaller, and
every other component's share is w / (W + x) >= w / (W + w_s): the merged mechanism is at least as good
as the separate one on every release and on the keys. That is why it is chosen whenever the plan has a
count; with default weights x = 0 for COUNT alone, AVG alone, and COUNT with any other aggregate.
Among several counts, the one with the largest weight is used (the smallest x), then by kind:
COUNT(DISTINCT unit) (its per-key counts move by at most 1 per unit: the smallest threshold), COUNT(*),
COUNT(expr), AVG, VAR; then the first.
"""

from __future__ import annotations

import math

from sandbox.protocol.plan import VARIANCE_KINDS, Aggregate, AggregateKind, QueryPlan

# Preference among counts of equal weight (higher first).
_KIND_RANK = {
    AggregateKind.COUNT_DISTINCT_UNIT: 4,
    AggregateKind.COUNT: 3,
    AggregateKind.COUNT_COLUMN: 2,
    AggregateKind.AVG: 1,
}


def count_weight(agg: Aggregate) -> float | None:
    """The weight of `agg`'s count component (None if it has none): the aggregate's own weight for a
    COUNT, half of it for AVG (a sum and a count), a third for VAR/STDDEV (count, sum, sum of squares)."""
    if agg.kind in (AggregateKind.COUNT, AggregateKind.COUNT_COLUMN, AggregateKind.COUNT_DISTINCT_UNIT):
        return agg.weight
    if agg.kind is AggregateKind.AVG:
        return agg.weight / 2
    if agg.kind in VARIANCE_KINDS:
        return agg.weight / 3
    return None


def key_count(plan: QueryPlan) -> int | None:
    """The index of the aggregate whose "count" component is released by the threshold mechanism and
    decides the keys; None when the plan has no private key, or no count (separate selection)."""
    if not plan.partition_selection:
        return None
    best: tuple[float, int, int] | None = None
    chosen = None
    for i, agg in enumerate(plan.aggregates):
        w = count_weight(agg)
        if w is None:
            continue
        rank = (w, _KIND_RANK.get(agg.kind, 0), -i)
        if best is None or rank > best:
            best, chosen = rank, i
    return chosen


def boost(plan: QueryPlan, index: int) -> float:
    """x: the weight added to aggregate `index`'s count so its share is at least separate selection's."""
    total = math.fsum(a.weight for a in plan.aggregates)
    w_c = count_weight(plan.aggregates[index])
    assert w_c is not None
    w_s = plan.selection_weight
    return max(0.0, w_s - w_c - w_c * w_s / total)
