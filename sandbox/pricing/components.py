"""A plan's measurements before pricing: which aggregate, count or sum, sensitivity and share.

Shared by gateway and sandbox (pure: no data), so both derive the same d_in from their own catalog.

Privacy model. The privacy unit is the dataset's declared column (a person, an enterprise). Neighbouring
datasets differ by all rows of one unit. The sandbox keeps at most K = `max_rows_per_unit` rows of each unit
per table (truncation done once per data version, independently per unit, so it is stable), and clamps every
aggregated value to the catalog bounds [L, U]. Adding or removing one unit therefore changes

* a vector of counts (over all groups of a public domain, or the single ungrouped count) by at most K in L1,
* a vector of clamped sums by at most K * max(|L|, |U|) in L1,

which is `d_in` of a vector Laplace measurement (`sandbox.pricing.measurements`). Several aggregates in one
query compose sequentially: the charged epsilon is the sum of the maps (pure DP, basic composition).

K is the per-unit row bound of the plan's relation (`sandbox.plans.relation`: `max_rows_per_unit` of one
table, the product over a join on the unit, e.g. 12 for residents joined with social_insurance, 1 for a
per-unit subquery), and [L, U] are the bounds derived for the (possibly joined or derived) expression
through that relation. R is the number of cells one unit's rows can reach (`sandbox.plans.relation.
plan_reach`: 1 when every group key comes from a table with one row per unit or a per-unit subquery, at
most K, at most the number of cells). Per aggregate kind:

* COUNT(*), COUNT(expr): one count, L1 sensitivity K.
* COUNT(DISTINCT unit): one count of units per cell, L1 sensitivity R (a unit adds exactly 1 to each
  cell it reaches and 0 elsewhere); L2 sensitivity ceil(sqrt(R)).
* SUM(expr): one sum, K * max(|L|, |U|). AVG: a sum of (x - c) around the centre c of [L, U]
  (`avg_centre`), sensitivity K * max(c - L, U - c), and a count, half the share each.
* VAR/STDDEV: count, sum of z and sum of z^2 with z = (x - (L+U)/2) / ((U-L)/2) in [-1, 1]; each has
  sensitivity K and a third of the share; the variance is post-processing.
* QUANTILE (MEDIAN, QUANTILE_CONT/DISC, PERCENTILE_*, MIN = alpha 0, MAX = alpha 1): the point is
  OpenDP's `make_quantile_score_candidates` >> `make_noisy_max(negate=True)` over a grid of at most 1024
  candidates in [L, U]; the charge is that chain's `map(K)`. Each cell is one such release on disjoint
  rows and the map is linear in the number of rows changed, so one charge covers every cell. Its 95%
  interval is a second release, the "interval" component (share `interval_share`, default 1/2 of the
  aggregate's): noisy counts of a ladder of cells around the point, L1 sensitivity K (see
  `sandbox.pricing.quantiles` for the certification argument).

Partition selection (a group key without a public domain; `sandbox.plans.selection` decides how and
the shares). The threshold mechanism's d_in is (l0, l1, linf) over per-key counts: one unit touches at
most R keys (l0), and moves per-key row counts by at most K in all and in one key ((R, K, K)), per-key
counts of units by 1 in each of at most R keys ((R, R, 1)). On one of the plan's counts, that count's
component carries `keys` and is released by the threshold mechanism; otherwise a separate "select"
component (aggregate_index -1) over per-key row counts does. Only the released keys are answered; every
other component is released on them with the sensitivities above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from sandbox.errors import PlanRejectedError
from sandbox.plans import bounds
from sandbox.plans.bounds import float_up
from sandbox.plans.compile import avg_centre, quantile_candidates
from sandbox.plans.relation import Relation, key, plan_reach, plan_relation
from sandbox.plans.selection import boost, count_weight, key_count
from sandbox.pricing import quantiles
from sandbox.pricing.measurements import KeyBound, integer_sensitivity, quantile_measurement, score_transformation
from sandbox.protocol.catalog import ColumnInfo, DatasetInfo
from sandbox.protocol.plan import BOUNDED_KINDS, VARIANCE_KINDS, Aggregate, AggregateKind, Column, QueryPlan

SELECT = "select"  # the separate partition-selection component (aggregate_index -1)


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
    # Partition selection: this component's noisy per-key values are released by the threshold mechanism
    # and decide the keys; its d_in (l0, l1, linf) (the Gaussian one uses (l0, `l2`, linf)).
    keys: KeyBound | None = None

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

    Under partition selection the cells come from the data, so their number is `unknown`."""
    n = 1
    for g in plan.group_by:
        if g.domain is None:
            return unknown
        n *= len(g.domain)
    return n


def components(plan: QueryPlan, dataset: DatasetInfo) -> tuple[Component, ...]:
    """Split a plan into its measurements with their sensitivities and shares of the loss.

    Raises:
        PlanRejectedError: the plan refers to a table the catalog does not describe, a key without a
            public domain is not a usable column, or an aggregate has no finite bounds.
    """
    rel = plan_relation(plan, dataset)
    k = rel.k
    reach = plan_reach(plan, rel)
    total = math.fsum(a.weight for a in plan.aggregates)
    key_index = key_count(plan)
    extra = 0.0  # the weight selection adds (see sandbox.plans.selection)
    out: list[Component] = []
    if plan.partition_selection:
        _check_private_keys(plan, rel)
        rows_bound: KeyBound = (integer_sensitivity(reach), integer_sensitivity(k), integer_sensitivity(k))
        if key_index is None:
            extra = plan.selection_weight
            out.append(Component(-1, SELECT, True, integer_sensitivity(k), extra / (total + extra),
                                 keys=rows_bound))
        else:
            extra = boost(plan, key_index)
    total += extra
    for i, agg in enumerate(plan.aggregates):
        share = agg.weight / total
        keys: KeyBound | None = None
        if i == key_index:
            w_c = count_weight(agg)
            assert w_c is not None
            count_share = (w_c + extra) / total
            keys = ((integer_sensitivity(reach), integer_sensitivity(reach), 1)
                    if agg.kind is AggregateKind.COUNT_DISTINCT_UNIT else rows_bound)
        else:
            count_share = None
        if agg.kind in (AggregateKind.COUNT, AggregateKind.COUNT_COLUMN):
            out.append(Component(i, "count", True, integer_sensitivity(k), count_share or share, keys=keys))
            continue
        if agg.kind is AggregateKind.COUNT_DISTINCT_UNIT:
            # A unit adds 1 to each cell it reaches and nothing elsewhere.
            root = math.isqrt(reach)
            l2 = root if root * root == reach else root + 1  # ceil(sqrt(R)): OpenDP's i64 L2 distance is integral
            out.append(Component(i, "count", True, integer_sensitivity(reach), count_share or share,
                                 l2_sensitivity=l2, keys=keys))
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
            out.append(Component(i, "count", True, integer_sensitivity(k), count_share or share / 3, keys=keys))
            for comp in ("sum", "sumsq"):
                out.append(Component(i, comp, False, float_up(k), share / 3))
            continue
        if agg.kind is AggregateKind.SUM:
            out.append(Component(i, "sum", integer, sum_sensitivity(k, lo, hi, integer), share))
        else:  # AVG: a noisy centred sum and a noisy count, each with half of the aggregate's share
            centre = avg_centre(lo, hi, integer)
            out.append(Component(i, "sum", integer, centred_sensitivity(k, lo, hi, centre, integer),
                                 share / 2))
            out.append(Component(i, "count", True, integer_sensitivity(k), count_share or share / 2, keys=keys))
    return tuple(out)


def _check_private_keys(plan: QueryPlan, rel: Relation) -> None:
    """Keys without a public domain must be plain, non-identifier, non-float columns."""
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
