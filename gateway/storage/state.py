"""Governance state in the gateway's state database: grant overrides, revocations, request outcomes, alerts.

These tables live in the ledger's database (its SQLite file in WAL mode, or its PostgreSQL database), so every
gateway process sharing it sees the same overrides and revocations on its next request. Calls take a connection
from a pool.
"""

from __future__ import annotations

import dataclasses
import functools
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.errors import StorageUnavailableError
from gateway.policy.model import GrantOverride
from gateway.storage.pg import PgDatabase, ddl, ensure_schema
from gateway.storage.sqlite import ConnectionPool, immediate, open_location, prepare_location, writer_queue

__all__ = ["Outcome", "StateStore", "StoredAlert"]

# The stored fields of a GrantOverride, in its field order.
_OVERRIDE_COLUMNS = "epsilon, delta, max_epsilon_per_query, rho, max_rho_per_query"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS grant_overrides (
    organization TEXT NOT NULL,
    dataset      TEXT NOT NULL,
    purpose      TEXT NOT NULL,
    epsilon      REAL,
    delta        REAL,
    max_epsilon_per_query REAL,
    updated_at   REAL NOT NULL,
    updated_by   TEXT NOT NULL,
    rho          REAL,   -- zCDP grants (added after the first release: see _OVERRIDE_COLUMNS)
    max_rho_per_query REAL,
    PRIMARY KEY (organization, dataset, purpose)
) STRICT;
CREATE TABLE IF NOT EXISTS revocations (
    kind       TEXT NOT NULL CHECK (kind IN ('member', 'organization')),
    subject    TEXT NOT NULL,
    revoked_at REAL NOT NULL,
    revoked_by TEXT NOT NULL,
    reason     TEXT NOT NULL,
    PRIMARY KEY (kind, subject)
) STRICT;
CREATE TABLE IF NOT EXISTS requests (
    id           INTEGER PRIMARY KEY,
    created_at   REAL NOT NULL,
    consumer     TEXT NOT NULL,
    organization TEXT NOT NULL,
    dataset      TEXT NOT NULL,
    purpose      TEXT NOT NULL,
    use_class    TEXT NOT NULL,
    request_id   TEXT NOT NULL,
    outcome      TEXT NOT NULL CHECK (outcome IN ('charged', 'replayed', 'refused', 'failed')),
    reason       TEXT NOT NULL,
    epsilon      REAL NOT NULL,
    sql_hash     TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS requests_by_dataset ON requests (dataset, created_at);
CREATE INDEX IF NOT EXISTS requests_by_consumer ON requests (consumer, created_at);
CREATE TABLE IF NOT EXISTS alerts (
    id         INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    rule       TEXT NOT NULL,
    subject    TEXT NOT NULL,
    detail     TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS alerts_by_rule ON alerts (rule, subject, created_at);
CREATE TABLE IF NOT EXISTS generations (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT;
"""
# An alert's acknowledgement (who, when, a note): NULL while unacknowledged.
_ALERT_ACK_COLUMNS = (("acknowledged_at", "REAL"), ("acknowledged_by", "TEXT"), ("note", "TEXT"))


@dataclass(frozen=True, slots=True)
class Outcome:
    """One request's outcome as recorded for the data owner's view and the alert rules."""

    consumer: str
    organization: str
    dataset: str
    purpose: str
    use_class: str
    request_id: str
    outcome: str  # charged | replayed | refused | failed
    reason: str
    epsilon: float
    sql_hash: str
    created_at: float


class StateStore:
    """Overrides, revocations, outcomes and alerts in the state database."""

    def __init__(self, path: Path | PgDatabase, *, busy_timeout_s: float = 30.0) -> None:
        """Open the state database (the ledger's file or PostgreSQL database) and create the governance tables."""
        self.path = path if isinstance(path, PgDatabase) else Path(path)
        self._busy_timeout_s = busy_timeout_s
        prepare_location(self.path)
        self._writers = writer_queue(self.path)  # shared with the ledger: the state lives in its database
        self._pool = ConnectionPool(
            self._open, lambda: StorageUnavailableError("the governance state's storage failed; retry shortly"))
        if isinstance(self.path, PgDatabase):
            with self._conn() as conn:
                ensure_schema(conn, [*ddl(_SCHEMA), *(f"ALTER TABLE alerts ADD COLUMN IF NOT EXISTS {c} {k}"
                                                      for c, k in _ALERT_ACK_COLUMNS)])
            return
        with self._tx() as conn:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            have = {r[1] for r in conn.execute("PRAGMA table_info(grant_overrides)")}
            for column in ("rho", "max_rho_per_query"):  # state files written before zCDP grants
                if column not in have:
                    conn.execute(f"ALTER TABLE grant_overrides ADD COLUMN {column} REAL")
            have = {r[1] for r in conn.execute("PRAGMA table_info(alerts)")}
            for column, kind in _ALERT_ACK_COLUMNS:  # state files written before acknowledgements
                if column not in have:
                    conn.execute(f"ALTER TABLE alerts ADD COLUMN {column} {kind}")

    def close(self) -> None:
        """Close the pooled connections (later calls still work, on a connection each)."""
        self._pool.close()

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        with self._pool.connection() as conn:
            yield conn

    def _open(self) -> sqlite3.Connection:
        conn = open_location(self.path, busy_timeout_s=self._busy_timeout_s)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        def busy() -> StorageUnavailableError:
            return StorageUnavailableError("the governance state is busy (no write turn within the busy timeout)")

        with self._writers.turn(self._busy_timeout_s, busy), self._conn() as conn, immediate(conn):
            yield conn

    # -- overrides ---------------------------------------------------------------------------------

    def overrides(self) -> dict[tuple[str, str, str], GrantOverride]:
        """Every stored grant adjustment, by (organization, dataset, purpose)."""
        with self._conn() as conn:
            rows = conn.execute(
                f"SELECT organization, dataset, purpose, {_OVERRIDE_COLUMNS}"
                " FROM grant_overrides ORDER BY organization, dataset, purpose"
            ).fetchall()
        return {(o, d, p): GrantOverride(*values) for o, d, p, *values in rows}

    def set_override(self, key: tuple[str, str, str], override: GrantOverride, by: str) -> None:
        """Store (merge) an adjustment on top of the file's grant."""
        with self._tx() as conn:
            row = conn.execute(
                f"SELECT {_OVERRIDE_COLUMNS} FROM grant_overrides"
                " WHERE organization = ? AND dataset = ? AND purpose = ?", key,
            ).fetchone()
            merged = override.merged_onto(GrantOverride(*row) if row else GrantOverride())
            updates = ", ".join(f"{c} = excluded.{c}" for c in (*_OVERRIDE_COLUMNS.split(", "), "updated_at",
                                                                 "updated_by"))
            conn.execute(
                "INSERT INTO grant_overrides (organization, dataset, purpose, "
                f"{_OVERRIDE_COLUMNS}, updated_at, updated_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                f" ON CONFLICT (organization, dataset, purpose) DO UPDATE SET {updates}",
                (*key, *dataclasses.astuple(merged), time.time(), by),
            )

    def clear_override(self, key: tuple[str, str, str]) -> bool:
        """Remove the stored adjustment of grant `key`; False when there was none."""
        with self._tx() as conn:
            cur = conn.execute("DELETE FROM grant_overrides WHERE organization = ? AND dataset = ? AND purpose = ?",
                               key)
            return bool(cur.rowcount)

    # -- generations (replicas follow each other's policy reloads) ---------------------------------------

    def generation(self, name: str) -> int:
        """The counter `name` (0 before its first bump)."""
        with self._conn() as conn:
            row = conn.execute("SELECT value FROM generations WHERE name = ?", (name,)).fetchone()
        return 0 if row is None else int(row[0])

    def bump_generation(self, name: str) -> int:
        """Add one to the counter `name`; its new value."""
        with self._tx() as conn:
            (value,) = conn.execute(
                "INSERT INTO generations (name, value) VALUES (?, 1)"
                " ON CONFLICT (name) DO UPDATE SET value = generations.value + 1 RETURNING value", (name,)
            ).fetchone()
        return int(value)

    # -- revocations -------------------------------------------------------------------------------

    def revoke(self, kind: str, subject: str, by: str, reason: str = "") -> None:
        """Revoke a member or an organisation (effective for the next request)."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO revocations (kind, subject, revoked_at, revoked_by, reason) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (kind, subject) DO UPDATE SET revoked_at = excluded.revoked_at,"
                " revoked_by = excluded.revoked_by, reason = excluded.reason",
                (kind, subject, time.time(), by, reason),
            )

    def reinstate(self, kind: str, subject: str) -> bool:
        """Lift a revocation (effective for the next request); False when there was none."""
        with self._tx() as conn:
            cur = conn.execute("DELETE FROM revocations WHERE kind = ? AND subject = ?", (kind, subject))
            return cur.rowcount > 0

    def revoked(self, identity: str, organization: str) -> str | None:
        """'member' or 'organization' when that is revoked, else None."""
        with self._conn() as conn:
            row = conn.execute(
                "SELECT kind FROM revocations WHERE (kind = 'member' AND subject = ?)"
                " OR (kind = 'organization' AND subject = ?) ORDER BY kind",
                (identity, organization),
            ).fetchone()
        return None if row is None else str(row[0])

    def revocations(self) -> list[tuple[str, str]]:
        """Every revocation as (kind, subject)."""
        with self._conn() as conn:
            return [(k, s) for k, s in conn.execute("SELECT kind, subject FROM revocations ORDER BY 1, 2")]

    # -- request outcomes --------------------------------------------------------------------------

    def record_outcome(self, o: Outcome) -> None:
        """Append one request outcome."""
        with self._tx() as conn:
            self.write_outcome(conn, o)

    def joined_outcome(self, ledger: object, o: Outcome) -> Callable[[Any], None] | None:
        """`record_outcome` as a write in the ledger's completion transaction when both share one file: the
        ledger is the SQLite ledger of this file (its `path`; `gateway.budgets.ledger.Ledger`), whose completion
        hands its transaction's connection to the write."""
        if getattr(ledger, "path", None) != self.path:
            return None
        return functools.partial(self.write_outcome, o=o)

    @staticmethod
    def write_outcome(conn: sqlite3.Connection, o: Outcome) -> None:
        """`record_outcome` on a connection to the state database, inside the caller's transaction."""
        conn.execute(
            "INSERT INTO requests (created_at, consumer, organization, dataset, purpose, use_class,"
            " request_id, outcome, reason, epsilon, sql_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (o.created_at, o.consumer, o.organization, o.dataset, o.purpose, o.use_class,
             o.request_id, o.outcome, o.reason, o.epsilon, o.sql_hash),
        )

    def refusals_by_month(self, datasets: list[str]) -> dict[tuple[str, str], int]:
        """Refused requests on `datasets` per (dataset, month 'YYYY-MM' UTC): the transparency report's count."""
        if not datasets:
            return {}
        marks = ", ".join("?" for _ in datasets)
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT dataset, strftime('%Y-%m', created_at, 'unixepoch'), count(*) FROM requests"
                f" WHERE outcome = 'refused' AND dataset IN ({marks}) GROUP BY 1, 2", tuple(datasets)).fetchall()
        return {(str(d), str(m)): int(n) for d, m, n in rows}

    def outcomes(
        self, datasets: tuple[str, ...] | None, start: float | None = None, end: float | None = None
    ) -> list[Outcome]:
        """Recorded outcomes (on `datasets`, or all when None) in [start, end), oldest first."""
        where, args = "1 = 1", list[Any]()
        if datasets is not None:
            where += f" AND dataset IN ({', '.join('?' * len(datasets))})"
            args += list(datasets)
        if start is not None:
            where, args = where + " AND created_at >= ?", [*args, start]
        if end is not None:
            where, args = where + " AND created_at < ?", [*args, end]
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT consumer, organization, dataset, purpose, use_class, request_id, outcome, reason,"
                f" epsilon, sql_hash, created_at FROM requests WHERE {where} ORDER BY created_at, id", args,
            ).fetchall()
        return [Outcome(*r) for r in rows]

    def count_outcomes(self, consumer: str, since: float, *, outcome: str | None = None,
                       sql_hash: str | None = None) -> int:
        """How many outcomes of `consumer` since `since` (optionally of one kind or one SQL)."""
        where, args = "consumer = ? AND created_at >= ?", list[Any]([consumer, since])
        if outcome is not None:
            where, args = where + " AND outcome = ?", [*args, outcome]
        if sql_hash is not None:
            where, args = where + " AND sql_hash = ?", [*args, sql_hash]
        with self._conn() as conn:
            (n,) = conn.execute(f"SELECT count(*) FROM requests WHERE {where}", args).fetchone()
        return int(n)

    # -- alerts ------------------------------------------------------------------------------------

    def record_alert(self, rule: str, subject: str, detail: str, now: float) -> None:
        """Append one alert firing."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO alerts (created_at, rule, subject, detail) VALUES (?, ?, ?, ?)",
                (now, rule, subject, detail),
            )

    def last_alert(self, rule: str, subject: str) -> float | None:
        """When `rule` last fired for `subject`."""
        with self._conn() as conn:
            (t,) = conn.execute(
                "SELECT max(created_at) FROM alerts WHERE rule = ? AND subject = ?", (rule, subject)
            ).fetchone()
        return None if t is None else float(t)

    def alerts(self, since: float | None = None) -> list[tuple[float, str, str, str]]:
        """Alert firings (created_at, rule, subject, detail), oldest first."""
        with self._conn() as conn:
            return list(conn.execute(
                "SELECT created_at, rule, subject, detail FROM alerts WHERE created_at >= ? ORDER BY id",
                (since if since is not None else float("-inf"),),
            ))

    def alert_rows(self, *, include_acknowledged: bool, limit: int) -> list[StoredAlert]:
        """Alert firings, newest first, at most `limit`."""
        where = "" if include_acknowledged else " WHERE acknowledged_at IS NULL"
        with self._conn() as conn:
            rows = conn.execute(
                "SELECT id, created_at, rule, subject, detail, acknowledged_at, acknowledged_by, note"
                f" FROM alerts{where} ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return [StoredAlert(*r) for r in rows]

    def unacknowledged_alerts(self) -> int:
        """How many alerts nobody has acknowledged."""
        with self._conn() as conn:
            (n,) = conn.execute("SELECT count(*) FROM alerts WHERE acknowledged_at IS NULL").fetchone()
        return int(n)

    def acknowledge_alert(self, alert_id: int, by: str, note: str, now: float) -> StoredAlert | None:
        """Record who acknowledged alert `alert_id` (once: a second acknowledgement keeps the first); None when
        there is no such alert."""
        with self._tx() as conn:
            conn.execute(
                "UPDATE alerts SET acknowledged_at = ?, acknowledged_by = ?, note = ?"
                " WHERE id = ? AND acknowledged_at IS NULL", (now, by, note, alert_id))
            row = conn.execute(
                "SELECT id, created_at, rule, subject, detail, acknowledged_at, acknowledged_by, note"
                " FROM alerts WHERE id = ?", (alert_id,)).fetchone()
        return None if row is None else StoredAlert(*row)


@dataclass(frozen=True, slots=True)
class StoredAlert:
    """One alert firing and its acknowledgement (None while unacknowledged)."""

    id: int
    created_at: float
    rule: str
    subject: str
    detail: str
    acknowledged_at: float | None
    acknowledged_by: str | None
    note: str | None
