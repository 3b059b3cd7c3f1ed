"""The pooled SQLite connections behind the ledger, the state store, the audit log and the release cache."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.budgets.ledger import GrantKey, Ledger, PrivacyLoss
from gateway.errors import GatewayInternalError, PrivacyBudgetExhaustedError, StorageUnavailableError
from gateway.storage.sqlite import ConnectionPool, immediate


def _pool(path: Path) -> tuple[ConnectionPool, list[sqlite3.Connection]]:
    opened: list[sqlite3.Connection] = []

    def open_() -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        opened.append(conn)
        return conn

    return ConnectionPool(open_, lambda: GatewayInternalError("storage")), opened


def test_pool_reuses_a_connection(tmp_path: Path) -> None:
    """Sequential calls share one open connection instead of opening one each."""
    pool, opened = _pool(tmp_path / "db.sqlite3")
    for _ in range(5):
        with pool.connection() as conn:
            conn.execute("SELECT 1").fetchone()
    assert len(opened) == 1


def test_pool_drops_a_connection_after_a_sqlite_error(tmp_path: Path) -> None:
    """A sqlite3 error becomes the module's own error and that connection is not handed out again."""
    pool, opened = _pool(tmp_path / "db.sqlite3")
    with pytest.raises(GatewayInternalError) as info, pool.connection() as conn:
        conn.execute("SELECT * FROM no_such_table")
    assert isinstance(info.value.__cause__, sqlite3.OperationalError)
    with pool.connection() as conn:
        conn.execute("SELECT 1")
    assert len(opened) == 2


def test_pool_keeps_a_connection_after_a_rolled_back_refusal(tmp_path: Path) -> None:
    """A refusal raised inside a transaction rolls it back; the clean connection is reused."""
    pool, opened = _pool(tmp_path / "db.sqlite3")
    with pool.connection() as conn:
        conn.execute("CREATE TABLE t (x INTEGER)")
    with pytest.raises(ValueError, match="refused"), pool.connection() as conn, immediate(conn):
        conn.execute("INSERT INTO t VALUES (1)")
        raise ValueError("refused")
    with pool.connection() as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)
    assert len(opened) == 1


def test_pool_never_hands_out_a_connection_inside_a_transaction(tmp_path: Path) -> None:
    """A body that leaves a transaction open gives its connection up (closed), never to the next caller."""
    pool, opened = _pool(tmp_path / "db.sqlite3")
    with pool.connection() as conn:
        conn.execute("BEGIN")
    with pool.connection() as conn:
        assert not conn.in_transaction
    assert len(opened) == 2


def test_pool_close_closes_idle_connections(tmp_path: Path) -> None:
    """close() closes what is idle; later calls still work on a connection each."""
    pool, opened = _pool(tmp_path / "db.sqlite3")
    with pool.connection() as conn:
        conn.execute("SELECT 1")
    pool.close()
    with pytest.raises(sqlite3.ProgrammingError):
        opened[0].execute("SELECT 1")
    with pool.connection() as conn:
        conn.execute("SELECT 1")
    assert len(opened) == 2


def test_complete_commits_extra_writes_in_the_same_transaction(tmp_path: Path) -> None:
    """Ledger.complete(also=...) stores the other writes with the completion, or nothing at all."""
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    key = GrantKey("alice", "registry", "research")
    with sqlite3.connect(ledger.path) as conn:
        conn.execute("CREATE TABLE extra (x TEXT)")
    for rid in ("r1", "r2"):
        ledger.reserve(key, request_id=rid, fingerprint="f", cost=PrivacyLoss(0.1), budget=PrivacyLoss(1.0))

    def fails(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO extra VALUES ('lost')")
        conn.execute("INSERT INTO no_such_table VALUES (1)")

    ledger.complete(key, "r1", b"answer", also=[lambda c: c.execute("INSERT INTO extra VALUES ('kept')")])
    with pytest.raises(StorageUnavailableError):  # a storage failure: UNAVAILABLE, retry with the same id
        ledger.complete(key, "r2", b"answer", also=[fails])
    statuses = {r.request_id: r.status for r in ledger.history(key)}
    ledger.close()
    assert statuses == {"r1": "released", "r2": "reserved"}
    with sqlite3.connect(tmp_path / "ledger.sqlite3") as conn:
        assert conn.execute("SELECT x FROM extra").fetchall() == [("kept",)]


def test_release_cache_imports_an_earlier_versions_file_once(tmp_path: Path) -> None:
    """Releases stored in the old cache.sqlite3 keep being served from the ledger's file after an upgrade."""
    from gateway.products.query.cache import ReleaseCache

    legacy = tmp_path / "cache.sqlite3"
    conn = sqlite3.connect(legacy)
    conn.execute("CREATE TABLE releases (key TEXT PRIMARY KEY, consumer TEXT NOT NULL, response BLOB NOT NULL,"
                 " created_at REAL NOT NULL)")
    conn.execute("INSERT INTO releases VALUES ('k1', 'alice', x'01', 1.0)")
    conn.commit()
    conn.close()
    cache = ReleaseCache(tmp_path / "ledger.sqlite3", legacy=legacy)
    cache.put("k1", "alice", b"\x02")  # the first stored release wins
    cache.put("k2", "alice", b"\x03")
    assert (cache.get("k1"), cache.get("k2")) == (b"\x01", b"\x03")
    assert not legacy.exists() and (tmp_path / "cache.sqlite3.imported").exists()
    cache.close()
    again = ReleaseCache(tmp_path / "ledger.sqlite3", legacy=legacy)
    assert again.get("k1") == b"\x01"
    again.close()


def test_a_deferred_reservation_counts_at_once_and_leaves_full_sync_behind(tmp_path: Path) -> None:
    """reserve(durable=False) is visible to another process's ledger at once (admission stays exact), and the
    pooled connection it used is back to synchronous=FULL for the next (durable) transaction."""
    path = tmp_path / "ledger.sqlite3"
    first, second = Ledger(path), Ledger(path)
    key = GrantKey("alice", "registry", "research")
    first.reserve(key, request_id="r1", fingerprint="f", cost=PrivacyLoss(0.6), budget=PrivacyLoss(1.0),
                  durable=False)
    with pytest.raises(PrivacyBudgetExhaustedError):
        second.reserve(key, request_id="r2", fingerprint="f", cost=PrivacyLoss(0.6), budget=PrivacyLoss(1.0))
    with first._connection() as conn:
        assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    first.complete(key, "r1", b"answer")
    assert [r.status for r in second.history(key)] == ["released"]
    first.close()
    second.close()


def test_window_sums_read_only_covering_indexes(tmp_path: Path) -> None:
    """Every per-period sum is answered from an index holding the units (never from the rows, which carry
    the stored answers); the narrower indexes of earlier versions are replaced on open."""
    path = tmp_path / "ledger.sqlite3"
    Ledger(path).close()
    conn = sqlite3.connect(path)
    conn.execute("CREATE INDEX charges_by_key ON charges (consumer, dataset, purpose, created_at)")
    conn.commit()
    conn.close()
    Ledger(path).close()
    conn = sqlite3.connect(path)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "charges_by_key" not in names
    for where, args in (("consumer = ? AND dataset = ? AND purpose = ?", (1, 2, 3)),
                        ("organization = ? AND dataset = ? AND purpose = ?", (1, 2, 3)), ("dataset = ?", (1,))):
        plan = conn.execute("EXPLAIN QUERY PLAN SELECT coalesce(sum(epsilon_units), 0), coalesce(sum(delta_units), 0),"
                            " coalesce(sum(rho_units), 0)"
                            f" FROM charges WHERE {where} AND created_at >= ?", (*args, 0)).fetchall()
        assert "COVERING INDEX" in plan[0][3]
    conn.close()


def test_sqlite_stores_satisfy_the_storage_protocols_and_join_only_their_own_file(tmp_path: Path) -> None:
    """Callers program against gateway.budgets.stores; the SQLite classes satisfy it (also checked by mypy where
    start_gateway wires them). A release or outcome joins the ledger's completion transaction only when it
    lives in the ledger's file; elsewhere `joined_*` says no and the caller writes it separately."""
    from gateway.budgets.stores import GovernanceStore, LedgerStore, ReleaseStore
    from gateway.products.query.cache import ReleaseCache
    from gateway.storage.state import Outcome, StateStore

    ledger: LedgerStore = Ledger(tmp_path / "ledger.sqlite3")
    same: ReleaseStore = ReleaseCache(tmp_path / "ledger.sqlite3")
    other: ReleaseStore = ReleaseCache(tmp_path / "elsewhere.sqlite3")
    state: GovernanceStore = StateStore(tmp_path / "ledger.sqlite3")
    key = GrantKey("c", "d", "p")
    ledger.reserve(key, request_id="r", fingerprint="f", cost=PrivacyLoss(0.5), budget=PrivacyLoss(1.0))
    outcome = Outcome("c", "o", "d", "p", "public_welfare", "r", "charged", "", 0.5, "h", 1.0)
    joined = [same.joined_put(ledger, "k", "c", b"answer"), state.joined_outcome(ledger, outcome)]
    assert other.joined_put(ledger, "k", "c", b"answer") is None
    assert all(w is not None for w in joined)
    ledger.complete(key, "r", b"answer", also=[w for w in joined if w is not None])
    assert same.get("k") == b"answer" and other.get("k") is None
    assert [o.request_id for o in state.outcomes(None)] == ["r"]
    for s in (ledger, same, other, state):
        s.close()
