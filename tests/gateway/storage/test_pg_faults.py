"""PostgreSQL faults as the gateway's stores meet them, on a real server (and, where both backends share the
path, on SQLite too): a session that holds the write lock and
goes silent is ended within `PgDatabase.idle_in_transaction_s` (so it cannot stop the other replicas), and every
fault -- lock timeout, a backend ended by the server, a database refusing connections, a settler settling a
frozen process's charge -- reaches the caller as a `GatewayError` that says retry (StorageUnavailableError,
UNAVAILABLE + RetryInfo) or that the request failed for good (RequestFailedError), never as an internal error.
"""

from __future__ import annotations

import os
import sqlite3
import time

import psycopg
import pytest

from gateway.budgets.ledger import GrantKey, Ledger, PrivacyLoss
from gateway.errors import RequestFailedError, StorageUnavailableError
from gateway.storage.pg import WRITE_LOCK, PgDatabase
from gateway.storage.sqlite import open_location
from tests.gateway.storage.test_backends import Where

KEY = GrantKey("alice", "registry", "research")
ME = f"pgw pid={os.getpid()}"  # the application_name of this process's sessions


def _reserve(ledger: Ledger, rid: str) -> None:
    ledger.reserve(KEY, request_id=rid, fingerprint="f", cost=PrivacyLoss(0.1), budget=PrivacyLoss(10.0))


def _admin(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url, autocommit=True)


@pytest.mark.postgres
def test_a_silent_lock_holder_is_ended_within_the_idle_timeout(pg_url: str) -> None:
    """A session inside a write transaction that sends nothing (its process frozen, its host gone) is ended by
    the server after `idle_in_transaction_s`; a writer waiting for the lock gets it then, well inside its own
    `lock_timeout_s` (5 s here: without the idle timeout it would fail after those 5 s), and the silent session's
    next statement is a storage error (sqlite3.OperationalError, psycopg's error as its cause)."""
    db = PgDatabase(pg_url, lock_timeout_s=5.0, idle_in_transaction_s=1.0)
    holder, waiter = open_location(db, busy_timeout_s=5), open_location(db, busy_timeout_s=5)
    holder.execute("BEGIN IMMEDIATE")  # holds the write lock, then says nothing
    started = time.monotonic()
    waiter.execute("BEGIN IMMEDIATE")
    waited = time.monotonic() - started
    waiter.execute("COMMIT")
    assert 0.5 < waited < 4.0, waited
    with pytest.raises(sqlite3.OperationalError) as raised:
        holder.execute("SELECT 1")
    assert isinstance(raised.value.__cause__, psycopg.errors.IdleInTransactionSessionTimeout)
    for conn in (holder, waiter):
        conn.close()


@pytest.mark.postgres
def test_sessions_are_named_and_carry_the_limits(pg_url: str) -> None:
    """Every session names its process (pg_stat_activity) and has the lock and idle-transaction limits set."""
    conn = open_location(PgDatabase(pg_url), busy_timeout_s=5)
    assert conn.execute("SELECT current_setting('application_name')").fetchone() == (ME,)
    assert conn.execute("SHOW idle_in_transaction_session_timeout").fetchone() == ("10s",)
    assert conn.execute("SHOW lock_timeout").fetchone() == ("30s",)
    conn.close()


@pytest.mark.postgres
def test_a_lock_timeout_is_storage_unavailable(pg_url: str) -> None:
    """Another session holding the write lock past `lock_timeout_s`: the reservation is refused as retryable."""
    ledger = Ledger(PgDatabase(pg_url, lock_timeout_s=0.5))
    with _admin(pg_url) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (WRITE_LOCK,))
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError) as raised:
            _reserve(ledger, "r1")
        assert time.monotonic() - started < 5.0
        assert raised.value.retry_after_s is not None
        assert isinstance(raised.value.__cause__.__cause__, psycopg.errors.LockNotAvailable)  # type: ignore[union-attr]
    _reserve(ledger, "r1")  # the lock is free again: the same request id goes through
    assert [c.status for c in ledger.history(KEY)] == ["reserved"]
    ledger.close()


@pytest.mark.postgres
def test_backends_ended_by_the_server_are_storage_unavailable_then_replaced(pg_url: str) -> None:
    """pg_terminate_backend of the ledger's pooled sessions (an administrator, a failover, a restart): the
    next call is refused as retryable, and the one after it runs on a new session."""
    ledger = Ledger(PgDatabase(pg_url))
    _reserve(ledger, "r1")
    with _admin(pg_url) as admin:
        ended = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                              " WHERE application_name = %s", (ME,)).fetchone()
    assert ended is not None and int(str(ended[0])) >= 1
    with pytest.raises(StorageUnavailableError):
        _reserve(ledger, "r2")
    _reserve(ledger, "r2")
    ledger.complete(KEY, "r1", b"answer")
    assert {c.request_id: c.status for c in ledger.history(KEY)} == {"r1": "released", "r2": "reserved"}
    ledger.close()


@pytest.mark.postgres
def test_a_database_refusing_connections_is_storage_unavailable(pg_url: str) -> None:
    """The database stops accepting connections (too many clients, shutting down, locked by its administrator):
    a call that needs a new session is refused as retryable; once it accepts again, calls go through."""
    ledger = Ledger(PgDatabase(pg_url))
    dbname = pg_url.partition("///")[2].partition("?")[0]
    with _admin(pg_url.replace(f"///{dbname}?", "///postgres?")) as admin:
        admin.execute(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS false")
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (dbname,))
        with pytest.raises(StorageUnavailableError):
            _reserve(ledger, "r1")
        with pytest.raises(StorageUnavailableError):
            _reserve(ledger, "r1")
        admin.execute(f"ALTER DATABASE {dbname} ALLOW_CONNECTIONS true")
    _reserve(ledger, "r1")
    ledger.close()


def test_a_charge_settled_under_a_frozen_process_is_a_final_failure(storage: Where) -> None:
    """A process whose lease expired (frozen, starved) finds its charge settled as failed by a settler when it
    comes back: completing, failing or refunding it is RequestFailedError (final, ABORTED), not an internal
    error, and the charge stays as the settler left it (either backend)."""
    frozen, settler = Ledger(storage("ledger.sqlite3")), Ledger(storage("ledger.sqlite3"))
    frozen.heartbeat(time.time() - 60)  # its lease: renewed a minute ago, then nothing
    for rid in ("r1", "r2", "r3"):
        _reserve(frozen, rid)
    stale = settler.stale_reservations(time.time() + 2, lease_s=10)
    assert sorted(c.request_id for c in stale) == ["r1", "r2", "r3"]
    for charge in stale:
        settler.fail(charge.key, charge.request_id)
    with pytest.raises(RequestFailedError):
        frozen.complete(KEY, "r1", b"answer")
    with pytest.raises(RequestFailedError):
        frozen.fail(KEY, "r2")
    with pytest.raises(RequestFailedError):
        frozen.release_unused(KEY, "r3")
    assert {c.request_id: c.status for c in frozen.history(KEY)} == {"r1": "failed", "r2": "failed", "r3": "failed"}
    frozen.close()
    settler.close()


@pytest.mark.postgres
def test_the_lease_is_renewed_while_the_write_lock_is_held_elsewhere(pg_url: str) -> None:
    """The heartbeat takes no write lock: it renews the lease while another session holds the lock (a queue of
    writers longer than the lease must not make a live process look dead)."""
    ledger = Ledger(PgDatabase(pg_url, lock_timeout_s=0.5))
    with _admin(pg_url) as other:
        other.execute("SELECT pg_advisory_lock(%s)", (WRITE_LOCK,))
        ledger.heartbeat(12345.0)
        beat = other.execute("SELECT heartbeat FROM holders WHERE holder = %s", (ledger.holder,)).fetchone()
    assert beat == (12345.0,)
    ledger.close()
