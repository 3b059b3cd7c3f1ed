"""Bounded memo of the two pure, costly steps before a charge: SQL analysis and OpenDP pricing.

`analyze_query(sql, dataset)` (sqlglot parse + plan, about 1.7 ms) and `mechanisms.price(plan, dataset,
epsilon, delta)` / `zcdp.price(plan, dataset, rho, delta)` (OpenDP calibration, 1-4 ms) are pure functions
of their arguments: neither reads the policy, the budget or any data. So a hit returns exactly what a
fresh call would, and no decision can change:

* the grant, the per-query cap, the budget, revocations and the grade rules are checked on every
  request outside this memo, against the policy in force (a reload takes effect on the next request);
* the public dataset description is part of the key by identity (the object is kept in the entry, so
  its id cannot be reused), so a new catalog or data version never meets an old entry;
* only successes are remembered: a refused query is analysed again, and refused again, every time;
* pricing is keyed by the plan's canonical JSON (which tells `1` from `1.0` from `true`; dataclass
  equality would not) and the exact epsilon and delta.

Entries are least-recently-used, at most `max_entries` per step, shared by the threads of one process.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Generic, TypeVar

from gateway.products.query.sql.analyze import AnalyzedQuery, analyze_query
from gateway.products.query.sql.tree import MAX_GROUPS
from sandbox.pricing import mechanisms, zcdp
from sandbox.protocol.messages import DatasetInfo, QueryPlan, ReleaseCost, plan_to_json

__all__ = ["PlanCache"]

K = TypeVar("K")
V = TypeVar("V")


class _LRU(Generic[K, V]):
    def __init__(self, max_entries: int) -> None:
        self._max = max_entries
        self._entries: OrderedDict[K, tuple[DatasetInfo, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K, dataset: DatasetInfo) -> V | None:
        with self._lock:
            hit = self._entries.get(key)
            if hit is None or hit[0] is not dataset:
                return None
            self._entries.move_to_end(key)
            return hit[1]

    def put(self, key: K, dataset: DatasetInfo, value: V) -> None:
        with self._lock:
            self._entries[key] = (dataset, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)


class PlanCache:
    """Memoized `analyze_query` and `mechanisms.price` (see the module docstring for why it is safe)."""

    def __init__(self, max_entries: int = 512) -> None:
        """At most `max_entries` analyses and as many pricings."""
        self._analyses: _LRU[tuple[str, str, int, int], AnalyzedQuery] = _LRU(max_entries)
        self._prices: _LRU[tuple[str, str, str, int], tuple[ReleaseCost, ...]] = _LRU(max_entries)

    def analyze(self, sql: str, dataset: DatasetInfo, max_cells: int = MAX_GROUPS) -> AnalyzedQuery:
        """`analyze_query(sql, dataset, max_cells=...)`; raises what it raises (refusals are not remembered)."""
        key = (sql, dataset.name, id(dataset), max_cells)
        hit = self._analyses.get(key, dataset)
        if hit is None:
            hit = analyze_query(sql, dataset, max_cells=max_cells)
            self._analyses.put(key, dataset, hit)
        return hit

    def price(
        self, plan: QueryPlan, dataset: DatasetInfo, epsilon: float, delta: float = 0.0
    ) -> tuple[ReleaseCost, ...]:
        """`mechanisms.price(plan, dataset, epsilon, delta)`; raises what it raises (not remembered)."""
        key = (json.dumps(plan_to_json(plan), sort_keys=True), repr(epsilon), repr(delta), id(dataset))
        hit = self._prices.get(key, dataset)
        if hit is None:
            hit = mechanisms.price(plan, dataset, epsilon, delta)
            self._prices.put(key, dataset, hit)
        return hit

    def price_zcdp(
        self, plan: QueryPlan, dataset: DatasetInfo, rho: float, delta: float = 0.0
    ) -> tuple[ReleaseCost, ...]:
        """`zcdp.price(plan, dataset, rho, delta)`, memoized like `price` (a zCDP key never meets a pure one)."""
        key = ("zcdp " + json.dumps(plan_to_json(plan), sort_keys=True), repr(rho), repr(delta), id(dataset))
        hit = self._prices.get(key, dataset)
        if hit is None:
            hit = zcdp.price(plan, dataset, rho, delta)
            self._prices.put(key, dataset, hit)
        return hit
