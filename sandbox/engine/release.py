"""The release path: from the exact aggregates of a compiled plan to noisy answer rows (sandbox only).

Privacy: every value released here is the output of the measurement its `ReleaseCost` describes, which
the sandbox priced from its own catalog (`sandbox.pricing`): vectors of counts and sums through
`release_vector` over all cells at once, quantiles per cell through OpenDP's noisy max, and, under
partition selection, the keys (and the noisy counts of the component that selects them) through OpenDP's
threshold mechanism. Intervals, averages and variances are post-processing. The cells answered are the
public domain's (every combination, empty ones as zeros) or exactly the keys the threshold mechanism
releases, sorted by their JSON text so their order reveals nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from sandbox.plans.compile import CompiledPlan, QuantileQuery, avg_centre
from sandbox.plans.relation import Relation
from sandbox.pricing import mechanisms, quantiles
from sandbox.protocol.plan import VARIANCE_KINDS, Aggregate, AggregateKind, QueryPlan, Scalar
from sandbox.protocol.release import NoisyValue, ReleaseCost, ReleaseRow

Cell = tuple[Scalar, ...]
Rows = list[tuple[Any, ...]]
Component = tuple[int, str]


def within_range(cost: ReleaseCost, v: int | float) -> int | float:
    """Clamp an exact aggregate into the range `release_vector` accepts.

    Clamping each coordinate is 1-Lipschitz, so the L1 sensitivity is unchanged; it replaces a
    data-dependent failure (a sum beyond 2**53 or 1e15) by a biased but private answer.
    """
    if cost.mechanism in mechanisms.INTEGER_MECHANISMS:
        lim_i = mechanisms.MAX_EXACT_INT - 1
        return max(-lim_i, min(lim_i, v)) if isinstance(v, int) else v
    lim_f = 1e15 * (1 - 1e-9)
    return max(-lim_f, min(lim_f, float(v)))



def select_cells(
    plan: QueryPlan, compiled: CompiledPlan, costs: tuple[ReleaseCost, ...], rows: Rows
) -> tuple[tuple[Cell, ...], dict[Cell, list[int | float]], dict[Component, list[int | float]]]:
    """The answered cells, the exact aggregates of each, and the components already released.

    With public domains the cells are every domain combination (empty ones are zero; groups outside the
    domain or with NULL keys are not released). Under partition selection they are the keys OpenDP's
    threshold mechanism releases from the exact per-key counts of the component whose cost is a threshold
    mechanism (`sandbox.plans.selection`), and nothing else; when that component is one of the plan's
    counts, the mechanism's noisy counts are its released values (returned as already released).
    """
    n_keys = len(plan.group_by)
    if not plan.partition_selection:
        zeros: list[int | float] = [0] * len(compiled.components)
        exact = {cell: list(zeros) for cell in compiled.cells}
        for r in rows:
            cell = tuple(r[:n_keys])
            if cell in exact:
                exact[cell] = list(r[n_keys:])
        return compiled.cells, exact, {}
    cost = next(c for c in costs if c.mechanism in mechanisms.THRESHOLD_MECHANISMS)
    j = compiled.components.index((cost.aggregate_index, cost.component))
    by_text: dict[str, Cell] = {}
    found: dict[Cell, list[int | float]] = {}
    counts: dict[str, int] = {}
    for r in rows:
        cell = tuple(r[:n_keys])
        text = json.dumps(list(cell), separators=(",", ":"), allow_nan=False, default=str)
        by_text[text] = cell
        found[cell] = list(r[n_keys:])
        v = r[n_keys + j]
        if isinstance(v, bool) or not isinstance(v, int):
            raise RuntimeError("non-integer key count")
        counts[text] = max(0, min(v, mechanisms.MAX_EXACT_INT - 1))  # 1-Lipschitz, as `within_range`
    released = mechanisms.release_threshold(cost, counts)
    keys = sorted(released)
    cells = tuple(by_text[t] for t in keys)
    done: dict[Component, list[int | float]] = {}
    if cost.aggregate_index >= 0:
        done[(cost.aggregate_index, cost.component)] = [released[t] for t in keys]
    return cells, {cell: found[cell] for cell in cells}, done


def release_rows(
    plan: QueryPlan,
    compiled: CompiledPlan,
    costs: tuple[ReleaseCost, ...],
    rel: Relation,
    run: Callable[[str], Rows],
) -> tuple[ReleaseRow, ...]:
    """Run the plan's SQL with `run` and release every component over the answered cells."""
    n_keys = len(plan.group_by)
    rows = run(compiled.sql) if compiled.components or plan.partition_selection else []
    cells, exact, noisy = select_cells(plan, compiled, costs, rows)
    for row in exact.values():
        for v in row:
            if v is None or isinstance(v, bool) or not isinstance(v, int | float):
                raise RuntimeError("non-numeric exact aggregate")
            if not math.isfinite(v):
                raise RuntimeError("non-finite exact aggregate")
    column = {comp: j for j, comp in enumerate(compiled.components)}
    by_comp = {(c.aggregate_index, c.component): c for c in costs}
    for cost in costs:
        comp = (cost.aggregate_index, cost.component)
        if cost.component in (mechanisms.SELECT, "quantile", quantiles.INTERVAL) or comp in noisy:
            continue
        j = column[comp]
        vector = [within_range(cost, exact[cell][j]) for cell in cells]
        # An empty key set (nothing passed the threshold) releases nothing; the noise is
        # still charged, as the plan said.
        noisy[comp] = mechanisms.release_vector(cost, vector) if vector else []
    released: dict[int, list[NoisyValue]] = {}
    for q in compiled.quantiles:
        released[q.aggregate_index] = release_quantile(
            run, plan.aggregates[q.aggregate_index], q, by_comp[(q.aggregate_index, "quantile")],
            by_comp.get((q.aggregate_index, quantiles.INTERVAL)), cells, n_keys,
        )
    out: list[ReleaseRow] = []
    for n, cell in enumerate(cells):
        values = [cell_value(i, agg, n, by_comp, noisy, released, rel) for i, agg in enumerate(plan.aggregates)]
        out.append(ReleaseRow(keys=cell, values=tuple(values)))
    return tuple(out)


def release_quantile(
    run: Callable[[str], list[tuple[Any, ...]]],
    agg: Aggregate,
    q: QuantileQuery,
    cost: ReleaseCost,
    interval_cost: ReleaseCost | None,
    cells: tuple[tuple[Scalar, ...], ...],
    n_keys: int,
) -> list[NoisyValue]:
    """Per cell: the point (noisy max) and its 95% interval (noisy ladder counts), from per-candidate
    counts computed in DuckDB.

    Privacy: the point is `mechanisms.release_quantile` per cell (charged once: disjoint rows, map
    linear in K). The ladder of each cell depends only on that cell's released point; all cells'
    ladder counts are one vector discrete Laplace release at L1 sensitivity K (`interval_cost`),
    each row being in exactly one cell of one ladder. The interval is post-processing of both
    (`sandbox.pricing.quantiles.certified_interval`; the argument is in that module). Without an interval
    release (the consumer's share 0) the interval is [L, U]. `stddev` carries the point's 95% rank
    accuracy in rows (`mechanisms.quantile_rank_accuracy`).
    """
    assert agg.quantile is not None and agg.lower is not None and agg.upper is not None
    m = len(q.candidates)
    counts = {cell: [0] * m for cell in cells}
    for r in run(q.sql):
        cell, j, c = tuple(r[:n_keys]), r[n_keys], r[n_keys + 1]
        if cell not in counts:  # outside the domain, or not released by partition selection
            continue
        if not isinstance(j, int) or not 0 <= j < m or not isinstance(c, int) or c < 0:
            raise RuntimeError("bad quantile bucket")
        counts[cell][j] += c
    integer = all(v.is_integer() for v in q.candidates) and m > 1 and q.candidates[1] - q.candidates[0] == 1.0
    rank = mechanisms.quantile_rank_accuracy(cost, m, agg.quantile)
    release = mechanisms.quantile_releaser(cost, q.candidates, agg.quantile)
    points = [release(counts[cell]) for cell in cells]
    intervals = [(float(agg.lower), float(agg.upper))] * len(cells)
    mechanism = cost.mechanism
    if interval_cost is not None and cells:
        ladders = [quantiles.ladder(p, m) for p in points]
        exact: list[int] = []
        for cell, steps in zip(cells, ladders, strict=True):
            exact.extend(quantiles.ladder_counts(counts[cell], steps))
        noisy = mechanisms.release_vector(interval_cost, exact)
        intervals, at = [], 0
        for steps in ladders:
            part = noisy[at : at + len(steps) + 1]
            at += len(steps) + 1
            intervals.append(quantiles.certified_interval(
                part, steps, agg.quantile, interval_cost.scale, q.candidates, q.exact,
                interval_cost.mechanism))
        mechanism = f"{cost.mechanism}/{interval_cost.mechanism}"
    out: list[NoisyValue] = []
    for p, (lo, hi) in zip(points, intervals, strict=True):
        v = min(max(q.candidates[p], lo), hi)  # post-processing: the point clamped into its interval
        out.append(
            NoisyValue(
                value=int(v) if integer else float(v),
                mechanism=mechanism,
                scale=cost.scale,
                stddev=rank,
                ci_lower=lo,
                ci_upper=hi,
            )
        )
    return out


def cell_value(
    i: int,
    agg: Aggregate,
    n: int,
    by_comp: dict[tuple[int, str], ReleaseCost],
    noisy: dict[tuple[int, str], list[int | float]],
    released: dict[int, list[NoisyValue]],
    rel: Relation,
) -> NoisyValue:
    if agg.kind is AggregateKind.QUANTILE:
        return released[i][n]
    if agg.kind is AggregateKind.AVG:
        lo, hi, integer = mechanisms.aggregate_bounds(agg, rel)
        return mechanisms.noisy_average(
            by_comp[(i, "sum")],
            by_comp[(i, "count")],
            float(noisy[(i, "sum")][n]),
            float(noisy[(i, "count")][n]),
            lo,
            hi,
            avg_centre(lo, hi, integer),
        )
    if agg.kind in VARIANCE_KINDS:
        lo, hi, _ = mechanisms.aggregate_bounds(agg, rel)
        return mechanisms.noisy_variance(
            agg.kind,
            by_comp[(i, "count")],
            by_comp[(i, "sum")],
            by_comp[(i, "sumsq")],
            float(noisy[(i, "count")][n]),
            float(noisy[(i, "sum")][n]),
            float(noisy[(i, "sumsq")][n]),
            lo,
            hi,
        )
    comp = "sum" if agg.kind is AggregateKind.SUM else "count"
    # Post-processing: a count, or a sum of values clamped to [L >= 0, U], cannot be negative;
    # clamping the noisy value and its interval at 0 keeps the truth inside.
    nonnegative = comp == "count" or mechanisms.aggregate_bounds(agg, rel)[0] >= 0
    return mechanisms.noisy_count_or_sum(
        by_comp[(i, comp)], noisy[(i, comp)][n], nonnegative=nonnegative
    )
