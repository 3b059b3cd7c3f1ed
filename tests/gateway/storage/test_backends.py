"""The store contracts on both backends (SQLite file, PostgreSQL database): governance state, release cache,
the ledger's completion joining the other stores' writes, and the SQL translation for PostgreSQL."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.budgets.ledger import GrantKey, Ledger, PrivacyLoss
from gateway.errors import ConfigError, StorageUnavailableError
from gateway.policy.model import GrantOverride
from gateway.products.query.cache import ReleaseCache
from gateway.release.audit import AuditLog, AuditRecord
from gateway.release.signing import Signer, load_or_create_hmac_key
from gateway.settings import load_settings
from gateway.storage.pg import PgDatabase, check_reachable, translate
from gateway.storage.sqlite import open_location
from gateway.storage.state import Outcome, StateStore

Where = Callable[[str], Path | PgDatabase]
KEY = GrantKey("alice", "registry", "research")


def test_translate_spells_sqlite_for_postgres() -> None:
    """Parameters, SQLite's functions and the truncating minute cast come out in PostgreSQL's spelling."""
    assert translate("SELECT x FROM t WHERE a = ? AND b LIKE '%z'") == \
        "SELECT x FROM t WHERE a = %s AND b LIKE '%%z'"
    assert translate("SELECT strftime('%Y-%m', created_at, 'unixepoch'), total(epsilon) FROM c") == (
        "SELECT to_char(to_timestamp(created_at) AT TIME ZONE 'UTC', 'YYYY-MM'),"
        " CAST(coalesce(sum(epsilon), 0) AS DOUBLE PRECISION) FROM c")
    assert translate("CAST(NEW.created_at / 60 AS INTEGER)") == "CAST(floor(NEW.created_at / 60) AS BIGINT)"


def test_state_store_round_trips(storage: Where) -> None:
    """Overrides merge, revocations replace, outcomes and alerts append, generations count, on either backend."""
    state = StateStore(storage("ledger.sqlite3"))
    key = ("org", "registry", "research")
    state.set_override(key, GrantOverride(epsilon=2.0), "ops")
    state.set_override(key, GrantOverride(max_epsilon_per_query=0.5), "ops")
    assert state.overrides() == {key: GrantOverride(epsilon=2.0, max_epsilon_per_query=0.5)}
    state.revoke("member", "bob", "ops", "first")
    state.revoke("member", "bob", "ops", "again")  # replaces, no duplicate key error
    assert state.revoked("bob", "org") == "member" and state.revocations() == [("member", "bob")]
    assert state.reinstate("member", "bob") and not state.reinstate("member", "bob")
    o = Outcome("bob", "org", "registry", "research", "public_welfare", "r1", "refused", "x", 0.0, "h",
                1_767_225_600.0)
    state.record_outcome(o)
    assert state.outcomes(("registry",)) == [o]
    assert state.count_outcomes("bob", 0.0, outcome="refused") == 1
    assert state.refusals_by_month(["registry"]) == {("registry", "2026-01"): 1}
    state.record_alert("rule", "bob", "detail", 5.0)
    assert state.last_alert("rule", "bob") == 5.0 and state.unacknowledged_alerts() == 1
    [row] = state.alert_rows(include_acknowledged=True, limit=10)
    acked = state.acknowledge_alert(row.id, "ops", "seen", 6.0)
    assert acked is not None and acked.acknowledged_by == "ops" and state.unacknowledged_alerts() == 0
    assert state.generation("policy") == 0
    assert [state.bump_generation("policy") for _ in range(3)] == [1, 2, 3]
    assert StateStore(storage("ledger.sqlite3")).generation("policy") == 3  # another process sees it
    state.close()


def test_release_cache_first_release_wins(storage: Where) -> None:
    """The cache keeps the first release stored under a key."""
    cache = ReleaseCache(storage("ledger.sqlite3"))
    assert cache.get("k") is None
    cache.put("k", "alice", b"first")
    cache.put("k", "alice", b"second")
    assert cache.get("k") == b"first"
    cache.close()


def test_completion_commits_cache_outcome_and_audit_entry_together(storage: Where, tmp_path: Path) -> None:
    """The release, its outcome and its audit entry join the ledger's completion: all committed, or (a failing
    write among them) none, the charge still reserved."""
    where = storage("ledger.sqlite3")
    ledger, state, cache = Ledger(where), StateStore(where), ReleaseCache(where)
    keys = tmp_path / "keys"
    audit = AuditLog(where, Signer.load_or_create(keys), load_or_create_hmac_key(keys))
    for rid in ("r1", "r2"):
        ledger.reserve(KEY, request_id=rid, fingerprint="f", cost=PrivacyLoss(0.1), budget=PrivacyLoss(1.0))

    def writes(rid: str) -> list[Callable[[object], None]]:
        put = cache.joined_put(ledger, f"key-{rid}", "alice", b"answer")
        outcome = state.joined_outcome(ledger, Outcome("alice", "org", "registry", "research", "u", rid,
                                                       "charged", "", 0.1, "h", 1.0))
        record = AuditRecord(request_id=rid, consumer="alice", rpc="Q", outcome="answered", dataset="registry",
                             purpose="research", query="SELECT 1", epsilon=0.1, charge="charged")
        assert put is not None and outcome is not None  # one database: both join
        return [put, outcome, lambda conn: audit.append_in(conn, record)]  # type: ignore[arg-type]

    def broken(conn: object) -> None:
        conn.execute("INSERT INTO no_such_table VALUES (1)")  # type: ignore[attr-defined]

    ledger.complete(KEY, "r1", b"answer", also=writes("r1"))
    with pytest.raises(StorageUnavailableError):
        ledger.complete(KEY, "r2", b"answer", also=[*writes("r2"), broken])
    assert {r.request_id: r.status for r in ledger.history(KEY)} == {"r1": "released", "r2": "reserved"}
    assert cache.get("key-r1") == b"answer" and cache.get("key-r2") is None
    assert [o.request_id for o in state.outcomes(None)] == ["r1"]
    assert [e.request_id for e in audit.entries()] == ["r1"] and audit.verify().ok
    for store in (ledger, state, cache, audit):
        store.close()


def test_audit_chain_is_one_chain_under_concurrent_completions(storage: Where, tmp_path: Path) -> None:
    """Completions on 8 threads (each its own connection) append entries to one unbroken chain, in the order
    their transactions committed."""
    where = storage("ledger.sqlite3")
    ledger = Ledger(where)
    keys = tmp_path / "keys"
    audit = AuditLog(where, Signer.load_or_create(keys), load_or_create_hmac_key(keys), seal_every=7)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            for i in range(10):
                rid = f"t{t}-{i}"
                ledger.reserve(KEY, request_id=rid, fingerprint=hashlib.sha256(rid.encode()).hexdigest(),
                               cost=PrivacyLoss(0.001), budget=PrivacyLoss(10.0))
                record = AuditRecord(request_id=rid, consumer="alice", rpc="Q", outcome="answered",
                                     dataset="registry", purpose="research", query="q", epsilon=0.001,
                                     charge="charged")
                ledger.complete(KEY, rid, b"a", also=[lambda conn, r=record: audit.append_in(conn, r)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    report = audit.verify()
    assert report.ok and report.entries == 80, report.problems
    conn = open_location(where, busy_timeout_s=5)
    try:
        (n,) = conn.execute("SELECT count(*) FROM charges WHERE status = 'released'").fetchone()
    finally:
        conn.close()
    assert n == 80
    ledger.close()
    audit.close()


def test_storage_url_must_be_a_postgresql_url() -> None:
    """storage_url is empty (SQLite) or a postgresql:// URL; anything else is refused naming the setting."""
    assert load_settings({"storage_url": ""}).storage_url == ""
    assert load_settings({"storage_url": "postgresql://db/gw"}).storage_url == "postgresql://db/gw"
    with pytest.raises(ConfigError, match="storage_url"):
        load_settings({"storage_url": "mysql://db/gw"})


def test_an_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    """A replica whose database cannot be reached fails to open its ledger with the store's own error."""
    with pytest.raises(StorageUnavailableError):
        Ledger(PgDatabase(f"postgresql:///x?host={tmp_path}&port=1"))


def test_a_replica_names_an_unreachable_storage_url(tmp_path: Path) -> None:
    """The start-up check names the setting and the database, without its password."""
    with pytest.raises(ConfigError, match="storage_url") as info:
        check_reachable(PgDatabase(f"postgresql://pgw:secret@/x?host={tmp_path}&port=1"))
    assert "secret" not in str(info.value)
