"""The data owner's own cap ledger: epsilon per dataset per period across ALL organisations.

The sandbox charges it in `Engine.execute` after pricing a plan and before touching data, in its own
SQLite file under the data owner's state directory (`python -m sandbox --state-dir`). The gateway
checks the same caps from the catalog so consumers get a clean refusal, but only this ledger is the
data owner's word: a misconfigured or compromised gateway cannot spend past it.

Charges are keyed by the request id the gateway sends (scoped per consumer); an id that was already
charged is refused and never run again, so a replay is never charged twice and never gets fresh noise.
Sums are exact integer units (see `sandbox.periods`), checked and written in one `BEGIN IMMEDIATE`.

A window's spending is read as in the gateway's ledger: per-dataset totals per minute, hour and lifetime
kept by triggers in the charging transaction, plus the charges of the window's two partial minutes
(`sandbox.periods.window_pieces`), so a charge costs the same with 100,000 charges in the period as with
none (summing them took 20 ms there). One connection is kept open (serialised by a lock; other processes
are serialised by SQLite's write lock).
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Literal

from sandbox.errors import CAP_MESSAGE, DUPLICATE_MESSAGE
from sandbox.periods import BUCKET_SQL, DELTA_UNITS, EPSILON_UNITS, from_units, to_units, window_queries

__all__ = ["CAP_MESSAGE", "DUPLICATE_MESSAGE", "CapLedger", "CapOutcome"]



CapOutcome = Literal["charged", "exceeded", "duplicate"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cap_charges (
    request_id    TEXT PRIMARY KEY,
    dataset       TEXT NOT NULL,
    epsilon_units INTEGER NOT NULL CHECK (epsilon_units >= 0),
    delta_units   INTEGER NOT NULL CHECK (delta_units >= 0),
    created_at    REAL NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS cap_charges_by_dataset ON cap_charges (dataset, created_at);
CREATE INDEX IF NOT EXISTS cap_charges_units_by_dataset
    ON cap_charges (dataset, created_at, epsilon_units, delta_units);
CREATE TABLE IF NOT EXISTS cap_buckets (
    dataset       TEXT NOT NULL,
    width         INTEGER NOT NULL,
    bucket        INTEGER NOT NULL,
    epsilon_units INTEGER NOT NULL,
    delta_units   INTEGER NOT NULL,
    charges       INTEGER NOT NULL,
    PRIMARY KEY (dataset, width, bucket)
) STRICT, WITHOUT ROWID;
"""
_VERSION = 1  # 1: cap_buckets


def _bucket_sql(prefix: str, sign: str) -> str:
    out = []
    for width, bucket in BUCKET_SQL.items():
        b = bucket.format(p=prefix)
        if sign == "+":
            out.append(
                "INSERT INTO cap_buckets (dataset, width, bucket, epsilon_units, delta_units, charges)"
                f" VALUES ({prefix}dataset, {width}, {b}, {prefix}epsilon_units, {prefix}delta_units, 1)"
                " ON CONFLICT (dataset, width, bucket) DO UPDATE SET"
                " epsilon_units = epsilon_units + excluded.epsilon_units,"
                " delta_units = delta_units + excluded.delta_units, charges = charges + 1;")
        else:
            out.append(
                f"UPDATE cap_buckets SET epsilon_units = epsilon_units - {prefix}epsilon_units,"
                f" delta_units = delta_units - {prefix}delta_units, charges = charges - 1"
                f" WHERE dataset = {prefix}dataset AND width = {width} AND bucket = {b};")
    return " ".join(out)


_TRIGGERS = (
    f"CREATE TRIGGER IF NOT EXISTS cap_buckets_insert AFTER INSERT ON cap_charges BEGIN {_bucket_sql('NEW.', '+')} END",
    f"CREATE TRIGGER IF NOT EXISTS cap_buckets_delete AFTER DELETE ON cap_charges BEGIN {_bucket_sql('OLD.', '-')} END",
    "CREATE TRIGGER IF NOT EXISTS cap_buckets_update AFTER UPDATE OF dataset, created_at, epsilon_units,"
    f" delta_units ON cap_charges BEGIN {_bucket_sql('OLD.', '-')} {_bucket_sql('NEW.', '+')} END",
)


class CapLedger:
    """Durable per-dataset cap accounting; safe across threads and processes on one host."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0) -> None:
        """Open (creating or upgrading if needed) the cap ledger file."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._conn = self._open()
        conn = self._conn
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            for statement in (*(t for t in _SCHEMA.split(";") if t.strip()), *_TRIGGERS):
                conn.execute(statement)
            if version < 1:  # an earlier file: build its buckets from its charges (triggers keep them after)
                conn.execute("DELETE FROM cap_buckets")
                for width, bucket in BUCKET_SQL.items():
                    conn.execute(
                        "INSERT INTO cap_buckets (dataset, width, bucket, epsilon_units, delta_units, charges)"
                        f" SELECT dataset, {width}, {bucket.format(p='')}, sum(epsilon_units), sum(delta_units),"
                        " count(*) FROM cap_charges GROUP BY 1, 2, 3")
                conn.execute(f"PRAGMA user_version = {_VERSION}")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            conn.close()
            raise
        conn.execute("COMMIT")

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def close(self) -> None:
        """Close the connection (later calls fail)."""
        with self._lock:
            self._conn.close()

    def _window_units(self, conn: sqlite3.Connection, dataset: str, start: float | None,
                      end: float | None) -> tuple[int, int]:
        """Exact (epsilon, delta) units charged on `dataset` in [start, end)."""
        eps = delta = 0
        for sql, params in window_queries(start, end, ("epsilon_units", "delta_units"), buckets="cap_buckets",
                                          bucket_where="dataset = ?", bucket_args=(dataset,),
                                          charges="cap_charges", charge_where="dataset = ?",
                                          charge_args=(dataset,)):
            e, d = conn.execute(sql, params).fetchone()
            eps, delta = eps + int(e), delta + int(d)
        return eps, delta

    def charge(
        self,
        request_id: str,
        dataset: str,
        epsilon: float,
        delta: float,
        *,
        cap_epsilon: float,
        cap_delta: float,
        window_start: float | None,
        window_end: float | None,
        now: float,
    ) -> CapOutcome:
        """Charge a plan's cost against the dataset's cap for the window containing `now`.

        Returns:
            'charged' (durable before returning), 'exceeded' (nothing written) or 'duplicate' (the
            request id was charged before; nothing written, the plan must not run).
        """
        eps_u = to_units(epsilon, EPSILON_UNITS, up=True)
        delta_u = to_units(delta, DELTA_UNITS, up=True)
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute(
                    "SELECT 1 FROM cap_charges WHERE request_id = ?", (request_id,)
                ).fetchone():
                    conn.execute("ROLLBACK")
                    return "duplicate"
                spent_e, spent_d = self._window_units(conn, dataset, window_start, window_end)
                if spent_e + eps_u > to_units(cap_epsilon, EPSILON_UNITS, up=False) or (
                    spent_d + delta_u > to_units(cap_delta, DELTA_UNITS, up=False)
                ):
                    conn.execute("ROLLBACK")
                    return "exceeded"
                conn.execute(
                    "INSERT INTO cap_charges VALUES (?, ?, ?, ?, ?)",
                    (request_id, dataset, eps_u, delta_u, now),
                )
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return "charged"

    def spent(self, dataset: str, window_start: float | None, window_end: float | None) -> float:
        """Epsilon charged on `dataset` in the window (for the data owner's inspection)."""
        with self._lock:
            units, _ = self._window_units(self._conn, dataset, window_start, window_end)
        return from_units(units, EPSILON_UNITS)
