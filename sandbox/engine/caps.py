"""The data owner's own cap ledger: what every release counts on each dataset's cap, across ALL consumers.

The sandbox charges it before touching data for every product: queries (`Engine.execute`), model training and
evaluation (`sandbox.products.models`), and verification checks (`sandbox.products.verification`, which also
counts the owner's
per-subject cap). It lives in its own SQLite file under the data owner's state directory (`python -m sandbox
--state-dir`). The gateway mirrors the same caps from the sandbox's public catalog so consumers get a clean
refusal, but only this ledger is the data owner's word: a misconfigured or compromised gateway cannot spend
past it.

Each charge stores what it counts in BOTH of the owner's definitions (`sandbox.pricing.cap_rules.CapCounts`: epsilon
and delta on an epsilon cap; rho and delta on a rho cap; flags for a release with no count in one of them), so
a cap whose definition changes still counts every earlier release soundly; a window holding a charge without
a count in the cap's measure counts as spent. The check covers the cap's period window and, when the owner
sets one, its lifetime cap, exactly (integer units) in one `BEGIN IMMEDIATE` with the write.

Charges are keyed by the request id the gateway sends (scoped per consumer: `<consumer>/<request id>`); an id
that was already charged, by any product, is refused and never run again, so a replay is never charged twice
and never gets fresh noise. Verification chunks are charged the same way with zero privacy loss.

Per-subject verification caps are counted in table `subject_checks`, keyed by (dataset, template, period
start, subject) where the subject is an HMAC-SHA256 under a key that never leaves the state directory
(`subject-hash.key`, mode 0600), over the dataset and the subject: subjects are never stored in clear. Rows
of earlier periods are deleted as the period moves on.

A window's spending is read as in the gateway's ledger: per-dataset totals per minute, hour and lifetime kept
by triggers in the charging transaction, plus the charges of the window's two partial minutes
(`sandbox.pricing.periods.window_pieces`), so a charge costs the same with 100,000 charges in the period as with none.
One connection is kept open (serialised by a lock; other processes are serialised by SQLite's write lock).
"""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from sandbox.engine.keys import load_or_create_key
from sandbox.errors import CAP_MESSAGE, DUPLICATE_MESSAGE
from sandbox.owner_caps import OwnerCap, SubjectCap
from sandbox.pricing.cap_rules import CapCounts, CapSums, pure_to_rho_units
from sandbox.pricing.periods import BUCKET_SQL, window_queries

__all__ = ["CAP_MESSAGE", "DUPLICATE_MESSAGE", "CapLedger", "CapOutcome", "CapSums", "Product"]

CapOutcome = Literal["charged", "exceeded", "exceeded_lifetime", "duplicate"]
Product = Literal["query", "train", "evaluate", "verify"]

_COUNT_COLUMNS = ("epsilon_units", "delta_units", "rho_units", "rho_delta_units", "no_epsilon", "no_rho")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS cap_charges (
    request_id      TEXT PRIMARY KEY,
    dataset         TEXT NOT NULL,
    epsilon_units   INTEGER NOT NULL CHECK (epsilon_units >= 0),
    delta_units     INTEGER NOT NULL CHECK (delta_units >= 0),
    created_at      REAL NOT NULL,
    product         TEXT NOT NULL DEFAULT 'query',
    rho_units       INTEGER NOT NULL DEFAULT 0 CHECK (rho_units >= 0),
    rho_delta_units INTEGER NOT NULL DEFAULT 0 CHECK (rho_delta_units >= 0),
    no_epsilon      INTEGER NOT NULL DEFAULT 0 CHECK (no_epsilon IN (0, 1)),
    no_rho          INTEGER NOT NULL DEFAULT 0 CHECK (no_rho IN (0, 1))
) STRICT;
CREATE INDEX IF NOT EXISTS cap_charges_by_dataset ON cap_charges (dataset, created_at);
DROP INDEX IF EXISTS cap_charges_units_by_dataset;
CREATE INDEX IF NOT EXISTS cap_charges_counts_by_dataset
    ON cap_charges (dataset, created_at, epsilon_units, delta_units, rho_units, rho_delta_units, no_epsilon, no_rho);
CREATE TABLE IF NOT EXISTS cap_buckets (
    dataset         TEXT NOT NULL,
    width           INTEGER NOT NULL,
    bucket          INTEGER NOT NULL,
    epsilon_units   INTEGER NOT NULL,
    delta_units     INTEGER NOT NULL,
    rho_units       INTEGER NOT NULL,
    rho_delta_units INTEGER NOT NULL,
    no_epsilon      INTEGER NOT NULL,
    no_rho          INTEGER NOT NULL,
    charges         INTEGER NOT NULL,
    PRIMARY KEY (dataset, width, bucket)
) STRICT, WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS subject_checks (
    dataset      TEXT NOT NULL,
    template     TEXT NOT NULL,
    period_start INTEGER NOT NULL,
    subject      BLOB NOT NULL,
    checks       INTEGER NOT NULL CHECK (checks >= 0),
    PRIMARY KEY (dataset, template, period_start, subject)
) STRICT, WITHOUT ROWID;
"""
_VERSION = 2  # 1: cap_buckets; 2: counts in both definitions (rho, flags), product, subject_checks
_IN_CHUNK = 500  # subjects per `IN (...)` read


def _bucket_sql(prefix: str, sign: str) -> str:
    out = []
    cols = ", ".join(_COUNT_COLUMNS)
    for width, bucket in BUCKET_SQL.items():
        b = bucket.format(p=prefix)
        if sign == "+":
            values = ", ".join(f"{prefix}{c}" for c in _COUNT_COLUMNS)
            sets = ", ".join(f"{c} = {c} + excluded.{c}" for c in _COUNT_COLUMNS)
            out.append(
                f"INSERT INTO cap_buckets (dataset, width, bucket, {cols}, charges)"
                f" VALUES ({prefix}dataset, {width}, {b}, {values}, 1)"
                f" ON CONFLICT (dataset, width, bucket) DO UPDATE SET {sets}, charges = charges + 1;")
        else:
            sets = ", ".join(f"{c} = {c} - {prefix}{c}" for c in _COUNT_COLUMNS)
            out.append(f"UPDATE cap_buckets SET {sets}, charges = charges - 1"
                       f" WHERE dataset = {prefix}dataset AND width = {width} AND bucket = {b};")
    return " ".join(out)


_TRIGGERS = (
    f"CREATE TRIGGER IF NOT EXISTS cap_buckets_insert AFTER INSERT ON cap_charges BEGIN {_bucket_sql('NEW.', '+')} END",
    f"CREATE TRIGGER IF NOT EXISTS cap_buckets_delete AFTER DELETE ON cap_charges BEGIN {_bucket_sql('OLD.', '-')} END",
    "CREATE TRIGGER IF NOT EXISTS cap_buckets_update AFTER UPDATE OF dataset, created_at, "
    + ", ".join(_COUNT_COLUMNS)
    + f" ON cap_charges BEGIN {_bucket_sql('OLD.', '-')} {_bucket_sql('NEW.', '+')} END",
)


def _fits(spent: CapSums, new: CapCounts, measure: str, budget: tuple[int, int]) -> bool:
    amount, delta, uncounted = spent.in_measure(measure)
    add_amount, add_delta, add_uncounted = new.in_measure(measure)
    if uncounted or add_uncounted:
        return False
    return amount + add_amount <= budget[0] and delta + add_delta <= budget[1]


class CapLedger:
    """Durable per-dataset cap accounting; safe across threads and processes on one host."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0) -> None:
        """Open (creating or upgrading if needed) the cap ledger file and its subject key next to it."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._subject_key = load_or_create_key(self.path.parent / "subject-hash.key")
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        self._conn = self._open()
        conn = self._conn
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            existed = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'cap_charges'").fetchone()
            migrate = existed is not None and version < _VERSION
            if migrate:
                _migrate(conn)
            for statement in (*(t for t in _SCHEMA.split(";") if t.strip()), *_TRIGGERS):
                conn.execute(statement)
            if migrate:  # build the buckets from the charges (the triggers keep them after)
                cols = ", ".join(_COUNT_COLUMNS)
                sums = ", ".join(f"sum({c})" for c in _COUNT_COLUMNS)
                for width, bucket in BUCKET_SQL.items():
                    conn.execute(
                        f"INSERT INTO cap_buckets (dataset, width, bucket, {cols}, charges)"
                        f" SELECT dataset, {width}, {bucket.format(p='')}, {sums}, count(*)"
                        " FROM cap_charges GROUP BY 1, 2, 3")
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

    def _window(self, conn: sqlite3.Connection, dataset: str, start: float | None, end: float | None) -> CapSums:
        """Exact sums of the counts charged on `dataset` in [start, end)."""
        totals = [0] * len(_COUNT_COLUMNS)
        for sql, params in window_queries(start, end, _COUNT_COLUMNS,
                                          buckets="cap_buckets", bucket_where="dataset = ?",
                                          bucket_args=(dataset,), charges="cap_charges",
                                          charge_where="dataset = ?", charge_args=(dataset,)):
            for i, v in enumerate(conn.execute(sql, params).fetchone()):
                totals[i] += int(v)
        return CapSums(*totals)

    def charge(
        self, request_id: str, dataset: str, product: Product, counts: CapCounts, cap: OwnerCap | None, *,
        now: float,
    ) -> CapOutcome:
        """Charge one release's `counts` against the dataset's cap (its period window at `now` and its
        lifetime cap), or record it when the dataset has no cap.

        Returns:
            'charged' (durable before returning), 'exceeded' / 'exceeded_lifetime' (nothing written) or
            'duplicate' (the request id was charged before; nothing written, the request must not run).
        """
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute("SELECT 1 FROM cap_charges WHERE request_id = ?", (request_id,)).fetchone():
                    conn.execute("ROLLBACK")
                    return "duplicate"
                if cap is not None:
                    w = cap.window(now)
                    if not _fits(self._window(conn, dataset, w.start, w.end), counts, cap.measure,
                                 (cap.units, cap.delta_units)):
                        conn.execute("ROLLBACK")
                        return "exceeded"
                    lifetime = cap.lifetime_units
                    if lifetime is not None and not _fits(self._window(conn, dataset, None, None), counts,
                                                          cap.measure, lifetime):
                        conn.execute("ROLLBACK")
                        return "exceeded_lifetime"
                conn.execute(
                    f"INSERT INTO cap_charges (request_id, dataset, created_at, product, {', '.join(_COUNT_COLUMNS)})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (request_id, dataset, now, product, *counts.as_row()),
                )
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return "charged"

    def subject_digests(self, dataset: str, subjects: Sequence[str]) -> list[bytes]:
        """The keyed hashes (16 bytes) under which `subjects` of `dataset` are counted."""
        base = hmac.new(self._subject_key, f"subject\x00{dataset}\x00".encode(), hashlib.sha256)

        def one(s: str) -> bytes:
            h = base.copy()
            h.update(s.encode())
            return h.digest()[:16]

        return [one(s) for s in subjects]

    def charge_checks(
        self, request_id: str, dataset: str, template: str, subjects: Sequence[str], cap: SubjectCap | None, *,
        now: float,
    ) -> list[bool] | None:
        """Record a verification request (no privacy loss) and count its claims on the owner's per-subject
        cap, in claim order (a subject repeated in the request meets the cap exactly as in separate ones).

        Returns:
            Per claim, True if it may be answered (counted), False if the subject's cap for this period is
            spent (not counted); None if the request id was charged before (nothing written).
        """
        digests = self.subject_digests(dataset, subjects) if cap is not None else []
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute("SELECT 1 FROM cap_charges WHERE request_id = ?", (request_id,)).fetchone():
                    conn.execute("ROLLBACK")
                    return None
                conn.execute("INSERT INTO cap_charges (request_id, dataset, created_at, product, epsilon_units,"
                             " delta_units) VALUES (?, ?, ?, 'verify', 0, 0)", (request_id, dataset, now))
                admitted = [True] * len(subjects)
                if cap is not None:
                    admitted = self._count_subjects(conn, dataset, template, digests, cap, now)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return admitted

    @staticmethod
    def _count_subjects(conn: sqlite3.Connection, dataset: str, template: str, digests: list[bytes],
                        cap: SubjectCap, now: float) -> list[bool]:
        start = cap.period_start(now)
        conn.execute("DELETE FROM subject_checks WHERE dataset = ? AND template = ? AND period_start < ?",
                     (dataset, template, start))
        distinct = list(dict.fromkeys(digests))
        seen: dict[bytes, int] = {}
        for i in range(0, len(distinct), _IN_CHUNK):
            part = distinct[i:i + _IN_CHUNK]
            seen.update(conn.execute(
                "SELECT subject, checks FROM subject_checks WHERE dataset = ? AND template = ? AND"
                f" period_start = ? AND subject IN ({', '.join('?' * len(part))})",
                (dataset, template, start, *part)).fetchall())
        admitted: list[bool] = []
        changed: dict[bytes, int] = {}
        for d in digests:
            n = changed.get(d, seen.get(d, 0))
            ok = n < cap.max_checks
            if ok:
                changed[d] = n + 1
            admitted.append(ok)
        conn.executemany(
            "INSERT INTO subject_checks (dataset, template, period_start, subject, checks) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (dataset, template, period_start, subject) DO UPDATE SET checks = excluded.checks",
            ((dataset, template, start, d, n) for d, n in changed.items()))
        return admitted

    def subject_count(self, dataset: str, template: str, subject: str, cap: SubjectCap, now: float) -> int:
        """How many checks of `subject` with `template` were counted in the period containing `now`."""
        [digest] = self.subject_digests(dataset, [subject])
        with self._lock:
            row = self._conn.execute(
                "SELECT checks FROM subject_checks WHERE dataset = ? AND template = ? AND period_start = ?"
                " AND subject = ?", (dataset, template, cap.period_start(now), digest)).fetchone()
        return int(row[0]) if row else 0

    def sums(self, dataset: str, window_start: float | None, window_end: float | None) -> CapSums:
        """The counts charged on `dataset` in [window_start, window_end) (None: unbounded)."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                return self._window(self._conn, dataset, window_start, window_end)
            finally:
                self._conn.execute("COMMIT")

    def usage(self, dataset: str, cap: OwnerCap | None, now: float) -> tuple[CapSums, CapSums]:
        """(this period's sums, the lifetime's sums) on `dataset`, read in one snapshot (no cap: the
        period is the lifetime)."""
        w = cap.window(now) if cap is not None else None
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                lifetime = self._window(self._conn, dataset, None, None)
                period = lifetime if w is None else self._window(self._conn, dataset, w.start, w.end)
            finally:
                self._conn.execute("COMMIT")
        return period, lifetime


def _migrate(conn: sqlite3.Connection) -> None:
    """A file of version 0 or 1: add the counts in both definitions and rebuild the buckets.

    An earlier charge was counted as (epsilon, delta) only; that stays its epsilon count. Its rho count is
    epsilon^2 / 2 when its delta is 0, and none (no_rho) otherwise. (Earlier zCDP charges were stored as the
    epsilon of their conversion at the grant's delta, without that delta; it is not recoverable.)
    """
    have = {r[1] for r in conn.execute("PRAGMA table_info(cap_charges)")}
    for column in ("product TEXT NOT NULL DEFAULT 'query'",
                   "rho_units INTEGER NOT NULL DEFAULT 0 CHECK (rho_units >= 0)",
                   "rho_delta_units INTEGER NOT NULL DEFAULT 0 CHECK (rho_delta_units >= 0)",
                   "no_epsilon INTEGER NOT NULL DEFAULT 0 CHECK (no_epsilon IN (0, 1))",
                   "no_rho INTEGER NOT NULL DEFAULT 0 CHECK (no_rho IN (0, 1))"):
        if column.split()[0] not in have:
            conn.execute(f"ALTER TABLE cap_charges ADD COLUMN {column}")
    rows = conn.execute("SELECT rowid, epsilon_units, delta_units FROM cap_charges").fetchall()
    conn.executemany("UPDATE cap_charges SET rho_units = ?, no_rho = ? WHERE rowid = ?",
                     ((pure_to_rho_units(int(e)) if int(d) == 0 else 0, int(int(d) > 0), rowid)
                      for rowid, e, d in rows))
    for trigger in ("cap_buckets_insert", "cap_buckets_delete", "cap_buckets_update"):
        conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    conn.execute("DROP TABLE IF EXISTS cap_buckets")
