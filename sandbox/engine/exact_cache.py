"""Exact aggregates of recent plans, kept inside the sandbox process so that a repeated query is noised afresh
without running DuckDB again.

What is kept: the rows a plan's SQL returned (exact counts, sums, bucket counts), under the key (consumer,
dataset version, SQL). The SQL is the compiled plan: `sandbox.plans.compile` renders a plan
deterministically, so the same plan always has the same text, and a plan on another data version has another
key (the data of a version never changes while the process lives; a new version needs a restart). Nothing of
it ever leaves the process: `sandbox.engine.release` draws fresh noise for every request from the rows,
whether they came from DuckDB or from here, and the request was charged (gateway ledger and the owner's cap)
exactly as if DuckDB had run. The consumer is part of the key so that how fast an answer comes back never
tells one consumer what another one asked.

Memory is bounded by the number of values held (`max_values`, rows x columns summed over the entries; one
value is a Python int or float, tens of bytes): the least recently used entries go first, and a result
larger than a quarter of the bound is never kept. `max_values` 0 disables the cache.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

__all__ = ["ExactCache"]

Rows = list[tuple[Any, ...]]


class ExactCache:
    """Least-recently-used exact results by (consumer, data version, SQL), at most `max_values` values."""

    def __init__(self, max_values: int) -> None:
        """Keep at most `max_values` values (0: keep nothing)."""
        if max_values < 0:
            raise ValueError("max_values must be >= 0")
        self.max_values = max_values
        self._entries: OrderedDict[tuple[str, str, str], tuple[tuple[Any, ...], ...]] = OrderedDict()
        self._sizes: dict[tuple[str, str, str], int] = {}
        self._held = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def held_values(self) -> int:
        """Values held now."""
        return self._held

    def rows(self, consumer: str, version: str, sql: str, run: Callable[[str], Rows]) -> Rows:
        """The exact rows of `sql` on data `version`: kept ones, or `run(sql)`'s (then kept if they fit).
        A failing `run` keeps nothing and raises."""
        key = (consumer, version, sql)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return list(hit)
            self.misses += 1
        rows = run(sql)
        size = sum(len(r) for r in rows) + 1
        if self.max_values and size <= self.max_values // 4:
            with self._lock:
                if key not in self._entries:
                    self._entries[key] = tuple(rows)
                    self._sizes[key] = size
                    self._held += size
                while self._held > self.max_values:
                    old, _ = self._entries.popitem(last=False)
                    self._held -= self._sizes.pop(old)
        return rows

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()
            self._sizes.clear()
            self._held = 0
