"""The sandbox's exact-aggregate cache: a repeated plan of one consumer is answered from the exact rows kept in
the process, with fresh noise every time and centred on the truth; another consumer, another WHERE constant or
a disabled cache runs DuckDB; the memory bound holds (least recently used go first, an oversized or failed
result is never kept). Real engine, real DuckDB, real OpenDP."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.catalog import load_catalog
from sandbox.engine.engine import Engine
from sandbox.engine.exact_cache import ExactCache
from sandbox.engine.limits import Limits
from sandbox.protocol.messages import Binary, Column, ExecuteRequest, ExecuteResult, Literal, QueryPlan
from tests.sandbox.engine.test_sandbox_engine import KEPT_ROWS, _plan, _write_data

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("exact-cache")
    _write_data(d)
    return d


def _engine(data_dir: Path, values: int = 1_000_000) -> Engine:
    return Engine(load_catalog(data_dir / "catalog.toml"), Limits(query_timeout_ms=5000, exact_cache_values=values))


def _count(engine: Engine, request_id: str, plan: QueryPlan | None = None, epsilon: float = 1.0) -> int | float:
    r = engine.execute(ExecuteRequest(request_id, plan or _plan(), epsilon))
    assert isinstance(r, ExecuteResult), r
    return r.rows[0].values[0].value


def test_a_repeated_plan_is_noised_afresh_from_kept_rows(data_dir: Path) -> None:
    """Twenty requests of one consumer for one plan: DuckDB runs once, nineteen come from the cache, and the
    noise is fresh and centred. At epsilon 1 the discrete Laplace scale is K = 2: twenty equal draws have
    probability < 1e-8, and one draw 20 scales away < 5e-9 (false failure < 1e-7 in all)."""
    engine = _engine(data_dir)
    values = [_count(engine, f"alice/{i}") for i in range(20)]
    assert (engine.exact.misses, engine.exact.hits) == (1, 19)
    assert len(set(values)) > 1
    assert all(abs(v - KEPT_ROWS) <= 20 * 2 for v in values)


def test_other_consumers_constants_and_a_disabled_cache_run_duckdb(data_dir: Path) -> None:
    """The same plan for another consumer misses (answer times never tell one consumer what another asked),
    so does a plan with another WHERE constant; with exact_cache_values 0 nothing is kept."""
    engine = _engine(data_dir)
    _count(engine, "alice/1")
    _count(engine, "bob/1")
    where = _plan(where=Binary(">", Column("income"), Literal(500)))
    _count(engine, "alice/2", where)
    assert (engine.exact.misses, engine.exact.hits) == (3, 0)
    _count(engine, "alice/3", where)
    assert engine.exact.hits == 1
    off = _engine(data_dir, values=0)
    for i in range(3):
        _count(off, f"alice/{i}")
    assert (off.exact.misses, off.exact.hits, off.exact.held_values) == (3, 0, 0)


def test_the_bound_holds_and_failures_are_not_kept() -> None:
    """At most max_values values: the least recently used entry goes first; a result over a quarter of the
    bound is returned but not kept; a run that raises keeps nothing."""
    cache = ExactCache(max_values=40)
    runs: list[str] = []

    def run(sql: str) -> list[tuple[int, ...]]:
        runs.append(sql)
        return [(1, 2, 3)] * 3  # 9 values + 1

    for sql in ("a", "b", "c", "d"):
        cache.rows("c1", "v1", sql, run)
    assert cache.held_values == 40
    cache.rows("c1", "v1", "a", run)  # a is now the most recently used
    cache.rows("c1", "v1", "e", run)  # b goes
    assert cache.held_values == 40
    runs.clear()
    for sql in ("a", "c", "d", "e"):
        cache.rows("c1", "v1", sql, run)
    assert runs == []
    cache.rows("c1", "v1", "b", run)
    assert runs == ["b"]
    cache.rows("c1", "v2", "a", run)  # another data version is another entry
    assert runs == ["b", "a"]

    big = ExactCache(max_values=40)
    assert big.rows("c1", "v1", "big", lambda sql: [(1,)] * 20) == [(1,)] * 20
    assert big.held_values == 0

    def fails(sql: str) -> list[tuple[int, ...]]:
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        big.rows("c1", "v1", "x", fails)
    assert big.held_values == 0
