"""The analysis and pricing memo: a hit returns exactly what a fresh call returns, and refusals are not kept."""

from __future__ import annotations

import msgspec.structs
import pytest

from gateway.errors import InvalidQueryError
from gateway.products.query import plancache
from gateway.products.query.plancache import PlanCache
from gateway.products.query.sql.analyze import analyze_query
from sandbox.pricing import mechanisms
from tests.gateway.products.query.test_analyze import REGISTRY

SQL = "SELECT SUM(income) AS total FROM residents"


def test_analysis_hit_equals_a_fresh_analysis() -> None:
    """The memoized analysis is the analyzer's own result, and the second call does not re-analyze."""
    cache = PlanCache()
    first = cache.analyze(SQL, REGISTRY)
    assert first == analyze_query(SQL, REGISTRY)
    assert cache.analyze(SQL, REGISTRY) is first


def test_a_new_dataset_description_never_meets_an_old_entry() -> None:
    """A changed catalog (another DatasetInfo object, e.g. a new data version) is analyzed afresh."""
    cache = PlanCache()
    first = cache.analyze(SQL, REGISTRY)
    newer = msgspec.structs.replace(REGISTRY, version="next")
    second = cache.analyze(SQL, newer)
    assert second is not first
    assert second == analyze_query(SQL, newer)


def test_refusals_are_analyzed_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused query is never remembered: each request runs the analyzer and is refused again."""
    calls = []
    real = plancache.analyze_query

    def counting(sql: str, dataset: object, **kw: int) -> object:
        calls.append(sql)
        return real(sql, dataset, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(plancache, "analyze_query", counting)
    cache = PlanCache()
    for _ in range(2):
        with pytest.raises(InvalidQueryError):
            cache.analyze("SELECT income FROM residents", REGISTRY)
    assert len(calls) == 2


def test_pricing_is_keyed_by_the_exact_epsilon_and_plan() -> None:
    """The memoized costs equal OpenDP's for that exact epsilon; another epsilon or plan is priced anew."""
    cache = PlanCache()
    plan = cache.analyze(SQL, REGISTRY).plan
    other = cache.analyze("SELECT SUM(income * 1.0) AS total FROM residents", REGISTRY).plan
    costs = cache.price(plan, REGISTRY, 1.0)
    assert costs == mechanisms.price(plan, REGISTRY, 1.0)
    assert cache.price(plan, REGISTRY, 1.0) is costs
    nudged = cache.price(plan, REGISTRY, 1.0 - 1e-12)
    assert nudged is not costs and nudged == mechanisms.price(plan, REGISTRY, 1.0 - 1e-12)
    assert cache.price(other, REGISTRY, 1.0) == mechanisms.price(other, REGISTRY, 1.0)


def test_entries_are_bounded() -> None:
    """The least recently used entries are dropped beyond max_entries."""
    cache = PlanCache(max_entries=2)
    first = cache.analyze(SQL, REGISTRY)
    cache.analyze("SELECT COUNT(*) AS n FROM residents", REGISTRY)
    cache.analyze("SELECT AVG(income) AS a FROM residents", REGISTRY)
    assert cache.analyze(SQL, REGISTRY) is not first


def test_zcdp_pricing_is_memoized_apart_from_pure_pricing() -> None:
    """zCDP costs equal OpenDP's for that exact rho; the same number as an epsilon is a different entry."""
    from sandbox.pricing import zcdp

    cache = PlanCache()
    plan = cache.analyze(SQL, REGISTRY).plan
    costs = cache.price_zcdp(plan, REGISTRY, 0.05)
    assert costs == zcdp.price(plan, REGISTRY, 0.05)
    assert cache.price_zcdp(plan, REGISTRY, 0.05) is costs
    assert cache.price(plan, REGISTRY, 0.05) == mechanisms.price(plan, REGISTRY, 0.05) != costs
    assert cache.price_zcdp(plan, REGISTRY, 0.04) == zcdp.price(plan, REGISTRY, 0.04)
