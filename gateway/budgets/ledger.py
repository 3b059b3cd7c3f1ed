"""The durable privacy-budget ledger: spend per (consumer, dataset, purpose) in WAL-mode SQLite.

Guarantees. Every state change runs in one ``BEGIN IMMEDIATE`` transaction on a connection opened
for that call, so the check "spent + cost <= budget" and the write of the charge are atomic with
respect to every other thread and every other process that opens the same file (SQLite's write
lock serializes them; waiting is bounded by ``busy_timeout_s``). ``reserve`` commits the charge
with ``synchronous=FULL`` before it returns, so a caller that releases an answer only after
``reserve`` returned has the charge on disk first, and it survives a crash or restart. With
``durable=False`` (the query path) the reservation commits without its own fsync: it is visible to
every thread and process at once (admission stays exact) and survives a process crash, and the next
durable commit on this file (``complete``, ``fail``, ``release_unused``: each ``synchronous=FULL``)
syncs the write-ahead log that holds it, so the caller must release nothing before one of those has
returned. Only a power loss or kernel crash between the two commits can lose the reservation, and
then nothing of that request has left the gateway. A request
that would exceed the budget is refused and writes nothing. Request ids are scoped per consumer;
a retried id with the same fingerprint replays the stored response (noise is never re-drawn), a
reused id with a different fingerprint is a conflict, and an id that was charged but never
completed cannot be retried. A charge is refunded only by ``release_unused`` (the data was never
touched); ``fail`` keeps it. The per-key running total in table ``spend`` is the source of truth
for admission; ``verify`` cross-checks it against the per-charge rows in table ``charges``.
Totals are IEEE doubles added in charge order, so admission compares exactly what ``spent``
reports (e.g. ten charges of 0.1 fit a budget of 1.0, but three of 0.1 do not fit 0.3).
"""

from __future__ import annotations

import math
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from gateway.errors import (
    GatewayError,
    GatewayInternalError,
    InvalidArgumentError,
    PrivacyBudgetExhaustedError,
    RequestFailedError,
    RequestIdConflictError,
    RequestInProgressError,
    StorageUnavailableError,
)
from gateway.policy.periods import DELTA_UNITS, EPSILON_UNITS, RHO_UNITS, Window, from_units, rfc3339, to_units
from gateway.storage.sqlite import ConnectionPool, immediate
from sandbox.pricing.cap_rules import CapCounts, CapSums, ReleaseLoss, counts, pure_to_rho_units
from sandbox.pricing.periods import BUCKET_SQL, window_queries

__all__ = [
    "BudgetLimit",
    "CapCounts",
    "ChargeRecord",
    "ChargeStatus",
    "GrantKey",
    "Ledger",
    "Metering",
    "PriorRelease",
    "PrivacyLoss",
    "Reservation",
    "pure_to_rho_units",
]

ChargeStatus = Literal["reserved", "released", "failed"]

# 2 adds exact units, organisation and metering columns; 3 adds rho_units; 4 adds zcdp_units, no_zcdp and
# the per-minute/hour/lifetime spending buckets kept by triggers; 5 adds conversion_delta_units and the
# counts on the data owner's cap (cap_*)
_SCHEMA_VERSION = 7
_VERIFY_RELATIVE_TOLERANCE = 1e-9

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    consumer TEXT NOT NULL,
    dataset  TEXT NOT NULL,
    purpose  TEXT NOT NULL,
    epsilon  REAL NOT NULL CHECK (epsilon >= 0),
    delta    REAL NOT NULL CHECK (delta >= 0),
    PRIMARY KEY (consumer, dataset, purpose)
) STRICT;
CREATE TABLE IF NOT EXISTS charges (
    consumer    TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    dataset     TEXT NOT NULL,
    purpose     TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    epsilon     REAL NOT NULL CHECK (epsilon >= 0),
    delta       REAL NOT NULL CHECK (delta >= 0),
    status      TEXT NOT NULL CHECK (status IN ('reserved', 'released', 'failed')),
    response    BLOB,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    -- issue-gov (schema 2): exact units, the organisation level, and metering at charge time
    organization  TEXT NOT NULL DEFAULT '',
    epsilon_units INTEGER NOT NULL DEFAULT 0 CHECK (epsilon_units >= 0),
    delta_units   INTEGER NOT NULL DEFAULT 0 CHECK (delta_units >= 0),
    use_class     TEXT NOT NULL DEFAULT '',
    data_owner    TEXT NOT NULL DEFAULT '',
    request_units INTEGER NOT NULL DEFAULT 0,
    price_per_request_unit TEXT NOT NULL DEFAULT '0',
    price_per_epsilon      TEXT NOT NULL DEFAULT '0',
    currency      TEXT NOT NULL DEFAULT '',
    -- schema 3: zCDP charges in exact nano-rho (0 for pure and approximate DP charges)
    rho_units     INTEGER NOT NULL DEFAULT 0 CHECK (rho_units >= 0),
    -- schema 4: what the charge counts on a zCDP (rho) level: its rho, or for a pure charge the rho of
    -- OpenDP's make_pureDP_to_zCDP (epsilon^2 / 2), and no_zcdp = 1 for an approximate-DP charge (no conversion)
    zcdp_units    INTEGER NOT NULL DEFAULT 0 CHECK (zcdp_units >= 0),
    no_zcdp       INTEGER NOT NULL DEFAULT 0 CHECK (no_zcdp IN (0, 1)),
    -- schema 5: a zCDP charge's epsilon_units is the conversion of its rho at this delta (the grant's delta
    -- less the selection delta), which an epsilon-measured grant level counts as delta with it
    conversion_delta_units INTEGER NOT NULL DEFAULT 0 CHECK (conversion_delta_units >= 0),
    -- schema 5: what the charge counts on the data owner's cap in each definition, from the owner's
    -- conversion_delta at charge time (sandbox.pricing.cap_rules.CapCounts: the sandbox's cap ledger stores the same)
    cap_epsilon_units   INTEGER NOT NULL DEFAULT 0 CHECK (cap_epsilon_units >= 0),
    cap_delta_units     INTEGER NOT NULL DEFAULT 0 CHECK (cap_delta_units >= 0),
    cap_rho_units       INTEGER NOT NULL DEFAULT 0 CHECK (cap_rho_units >= 0),
    cap_rho_delta_units INTEGER NOT NULL DEFAULT 0 CHECK (cap_rho_delta_units >= 0),
    cap_no_epsilon      INTEGER NOT NULL DEFAULT 0 CHECK (cap_no_epsilon IN (0, 1)),
    cap_no_rho          INTEGER NOT NULL DEFAULT 0 CHECK (cap_no_rho IN (0, 1)),
    -- schema 6: the product that charged (query, model): a model grant's limit counts its own charges
    product       TEXT NOT NULL DEFAULT 'query',
    -- schema 7: the gateway process that reserved the charge (`Ledger.holder`). While it holds a live lease
    -- in `holders`, a reserved charge is in progress, after that it is settled (`Settler`)
    holder        TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (consumer, request_id)
) STRICT;
CREATE INDEX IF NOT EXISTS charges_by_time ON charges (created_at);
-- Covering indexes for the per-period sums (every reservation and budget status sums a window): with
-- the units in the index the sum never reads the table rows, which hold the stored answers (about 12x
-- faster: 0.13 instead of 1.6 ms per 1,000 charges in a window). They replace the narrower
-- charges_by_key / charges_by_org / charges_by_dataset of earlier versions.
DROP INDEX IF EXISTS charges_by_key;
DROP INDEX IF EXISTS charges_by_org;
DROP INDEX IF EXISTS charges_by_dataset;
CREATE INDEX IF NOT EXISTS charges_units_by_key
    ON charges (consumer, dataset, purpose, created_at, epsilon_units, delta_units, rho_units);
CREATE INDEX IF NOT EXISTS charges_units_by_org
    ON charges (organization, dataset, purpose, created_at, epsilon_units, delta_units, rho_units);
CREATE INDEX IF NOT EXISTS charges_reserved ON charges (status, created_at) WHERE status = 'reserved';
CREATE TABLE IF NOT EXISTS holders (
    holder      TEXT PRIMARY KEY,
    pid         INTEGER NOT NULL,
    host        TEXT NOT NULL,
    heartbeat   REAL NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS charges_units_by_product
    ON charges (consumer, dataset, purpose, product, created_at, epsilon_units, delta_units);
CREATE INDEX IF NOT EXISTS charges_units_by_dataset
    ON charges (dataset, created_at, epsilon_units, delta_units, rho_units);
"""

# Schema 4: running totals per budget scope (member: consumer/dataset/purpose; organisation; dataset) and
# time bucket (width 60 s, 3600 s, or 0 = lifetime), kept in the charging transaction by triggers, so a
# window's spending is a sum of at most a few hundred bucket rows plus the charges of its two partial
# minutes, whatever the number of charges in it (summing the charges grew linearly: 56 ms per level
# with 100,000 charges in a month). The hour of a charge is its minute // 60 (integer), so the widths
# nest exactly. The charges stay the source of truth; `verify_buckets` recomputes the totals from them.
_SCOPE_COLUMNS = {
    "member": ("m", ("consumer", "dataset", "purpose")),
    "organization": ("o", ("organization", "dataset", "purpose")),
    "dataset_cap": ("d", ("dataset",)),  # also the dataset_cap_lifetime level
    "organization_all": ("O", ("organization",)),  # every grant of an organisation (spend-rate alerts)
}
# The scope key of a charge row (columns prefixed with "NEW." / "OLD." in triggers).
_SCOPES = {level: f"json_array('{tag}', " + ", ".join("{p}" + c for c in cols) + ")"
           for level, (tag, cols) in _SCOPE_COLUMNS.items()}
# What a member or organisation level reads, and what the data owner's cap levels read (flags last in each).
_GRANT_COLUMNS = ("epsilon_units", "delta_units", "rho_units", "zcdp_units", "conversion_delta_units", "no_zcdp")
_CAP_COLUMNS = ("cap_epsilon_units", "cap_delta_units", "cap_rho_units", "cap_rho_delta_units", "cap_no_epsilon",
                "cap_no_rho")
_FLAG_COLUMNS = frozenset({"no_zcdp", "cap_no_epsilon", "cap_no_rho"})
_UNIT_COLUMNS = _GRANT_COLUMNS + _CAP_COLUMNS


def _bucket_statements(prefix: str, sign: str) -> list[str]:
    """Add (sign '+') or subtract ('-') one charge row (`prefix` 'NEW.' or 'OLD.') to its buckets."""
    out = []
    values = ", ".join(f"{prefix}{c}" for c in _UNIT_COLUMNS)
    for scope in _SCOPES.values():
        for width, bucket in BUCKET_SQL.items():
            sc, b = scope.format(p=prefix), bucket.format(p=prefix)
            if sign == "+":
                sets = ", ".join(f"{c} = {c} + excluded.{c}" for c in (*_UNIT_COLUMNS, "charges"))
                out.append(f"INSERT INTO spend_buckets (scope, width, bucket, {', '.join(_UNIT_COLUMNS)}, charges)"
                           f" VALUES ({sc}, {width}, {b}, {values}, 1)"
                           f" ON CONFLICT (scope, width, bucket) DO UPDATE SET {sets};")
            else:
                sets = ", ".join(f"{c} = {c} - {prefix}{c}" for c in _UNIT_COLUMNS)
                out.append(f"UPDATE spend_buckets SET {sets}, charges = charges - 1"
                           f" WHERE scope = {sc} AND width = {width} AND bucket = {b};")
    return out


_BUCKETS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS spend_buckets (scope TEXT NOT NULL, width INTEGER NOT NULL,"
    " bucket INTEGER NOT NULL, " + ", ".join(f"{c} INTEGER NOT NULL" for c in _UNIT_COLUMNS) + ","
    " charges INTEGER NOT NULL, PRIMARY KEY (scope, width, bucket)) STRICT, WITHOUT ROWID",
    "CREATE TRIGGER IF NOT EXISTS charges_buckets_insert AFTER INSERT ON charges BEGIN "
    + " ".join(_bucket_statements("NEW.", "+")) + " END",
    "CREATE TRIGGER IF NOT EXISTS charges_buckets_delete AFTER DELETE ON charges BEGIN "
    + " ".join(_bucket_statements("OLD.", "-")) + " END",
    "CREATE TRIGGER IF NOT EXISTS charges_buckets_update AFTER UPDATE OF consumer, dataset, purpose,"
    " organization, created_at, " + ", ".join(_UNIT_COLUMNS) + " ON charges BEGIN "
    + " ".join(_bucket_statements("OLD.", "-") + _bucket_statements("NEW.", "+")) + " END",
)


def owner_counts(cost: PrivacyLoss, conversion_delta: float | None = None) -> CapCounts:
    """What a charge of `cost` counts on the data owner's cap, converting zCDP at the owner's
    `conversion_delta` (`sandbox.pricing.cap_rules.counts`; the governor passes the owner's, None: no epsilon count)."""
    return counts(ReleaseLoss.of(cost.epsilon, cost.delta, cost.rho), conversion_delta)


def zcdp_columns(epsilon_units: int, delta_units: int, rho_units: int) -> tuple[int, int]:
    """(zcdp_units, no_zcdp) of a charge: what it counts on a zCDP level (see the schema)."""
    if rho_units > 0:
        return rho_units, 0
    if epsilon_units > 0 and delta_units > 0:
        return 0, 1
    return pure_to_rho_units(epsilon_units), 0


@dataclass(frozen=True, slots=True)
class PrivacyLoss:
    """An (epsilon, delta) privacy loss, or for zCDP grants a rho: all finite, >= 0, delta < 1.

    Attributes:
        epsilon: The pure-DP part of the loss. For a zCDP charge: OpenDP's conversion of its rho at the
            grant's delta less the selection delta (`conversion_delta`), as the API reports it and billing
            prices it; what it counts on the data owner's cap follows the owner's rule (`sandbox.pricing.cap_rules`).
        delta: The approximate-DP part of the loss (zCDP: partition selection's delta).
        rho: zCDP charges only: the rho the grant's levels account.
        conversion_delta: zCDP charges only: the delta at which `epsilon` converts rho; an epsilon-measured
            grant level (a grant switched from zcdp) counts it as delta with the charge.
    """

    epsilon: float
    delta: float = 0.0
    rho: float = 0.0
    conversion_delta: float = 0.0

    def __post_init__(self) -> None:
        """Validates and normalizes both fields to float.

        Raises:
            ValueError: A field is not a real number, is not finite, or is out of range.
        """
        for name in ("epsilon", "delta", "rho", "conversion_delta"):
            value: object = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a real number, got {type(value).__name__}")
            as_float = float(value)
            if not math.isfinite(as_float):
                raise ValueError(f"{name} must be finite, got {as_float!r}")
            object.__setattr__(self, name, as_float)
        if self.epsilon < 0.0:
            raise ValueError(f"epsilon must be >= 0, got {self.epsilon!r}")
        if self.rho < 0.0:
            raise ValueError(f"rho must be >= 0, got {self.rho!r}")
        if not 0.0 <= self.delta < 1.0:
            raise ValueError(f"delta must be in [0, 1), got {self.delta!r}")
        if not 0.0 <= self.conversion_delta < 1.0:
            raise ValueError(f"conversion_delta must be in [0, 1), got {self.conversion_delta!r}")


@dataclass(frozen=True, slots=True)
class GrantKey:
    """The unit a budget is granted on: one consumer, one dataset, one purpose.

    Attributes:
        consumer: The authenticated consumer identity.
        dataset: The dataset name.
        purpose: The purpose the grant was made for.
    """

    consumer: str
    dataset: str
    purpose: str


@dataclass(frozen=True, slots=True)
class Reservation:
    """A fresh charge, committed (and durable, unless reserved with ``durable=False``: then durable with
    the caller's next ``complete``/``fail``/``release_unused``, before which nothing may be released).

    Attributes:
        request_id: The request id the charge was made for.
        key: The grant the charge was made against.
        cost: The privacy loss charged.
        spent_after: The total spent on ``key`` including this charge.
        level_units: For a nested reservation: per limit (in the order given), the exact (epsilon,
            delta, rho) units spent in its window including this charge, read in the charging
            transaction (so the budget status of the answer needs no second read).
        at: For a nested reservation: the time its windows were taken at.
    """

    request_id: str
    key: GrantKey
    cost: PrivacyLoss
    spent_after: PrivacyLoss
    level_units: tuple[tuple[int, int, int], ...] = ()
    at: float | None = None


@dataclass(frozen=True, slots=True)
class PriorRelease:
    """The request id was already answered: replay this response, do not run the query again.

    Attributes:
        request_id: The request id that was answered.
        response: The serialized answer stored by ``Ledger.complete``.
    """

    request_id: str
    response: bytes


@dataclass(frozen=True, slots=True)
class ChargeRecord:
    """One charge as recorded in the ledger.

    Attributes:
        request_id: The request id the charge was made for.
        cost: The privacy loss charged.
        status: 'reserved' (running or crashed), 'released' (answered) or 'failed' (charged).
        created_at: When the charge was made, in seconds since the Unix epoch.
    """

    request_id: str
    cost: PrivacyLoss
    status: ChargeStatus
    created_at: float


class Ledger:
    """The durable privacy-budget ledger in one SQLite file.

    Safe to share between threads, and between processes on the same host that each open their
    own ``Ledger`` on the same file (WAL needs a local filesystem, not NFS). Create it after any
    ``fork``. Calls take a connection from a pool (a fresh one per call cost about 0.5 ms).
    """

    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0) -> None:
        """Opens (creating if needed) the ledger file, its directories and its schema.

        Args:
            path: The SQLite file, usually inside the gateway's state directory.
            busy_timeout_s: How long a call waits for another writer before it fails.

        Raises:
            ValueError: busy_timeout_s is not positive.
            GatewayInternalError: The file exists but is not a ledger of a known version.
        """
        if not busy_timeout_s > 0:
            raise ValueError(f"busy_timeout_s must be > 0, got {busy_timeout_s!r}")
        self._path = Path(path)
        self._busy_timeout_s = float(busy_timeout_s)
        self._lock = threading.Lock()
        self._closed = False
        # This process's lease on its reservations (see `heartbeat` and `gateway.path.settle`).
        self.holder = uuid.uuid4().hex
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._pool = ConnectionPool(
            lambda: self._open(check_same_thread=False),
            lambda: StorageUnavailableError("the privacy ledger's storage failed; retry with the same request id"),
        )
        # The anchor connection is never used for queries. Holding it open keeps the WAL and its
        # index alive, so closing a per-call connection does not checkpoint and delete the WAL.
        self._anchor: sqlite3.Connection | None = self._open(check_same_thread=False)
        try:
            self._initialize(self._anchor)
        except BaseException:
            self._anchor.close()
            self._anchor = None
            raise

    @property
    def path(self) -> Path:
        """The SQLite file this ledger lives in."""
        return self._path

    # -- leases and settlement (gateway.path.settle) ---------------------------------------------------

    def heartbeat(self, now: float | None = None) -> None:
        """Renew this process's lease on its reservations (a reserved charge of a live holder is in progress)."""
        with self._transaction(durable=False) as conn:
            conn.execute(
                "INSERT INTO holders (holder, pid, host, heartbeat) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (holder) DO UPDATE SET heartbeat = excluded.heartbeat",
                (self.holder, os.getpid(), socket.gethostname(), time.time() if now is None else now))

    def release_lease(self) -> None:
        """Drop this process's lease (clean shutdown: its reservations are all settled by then)."""
        with self._transaction(durable=False) as conn:
            conn.execute("DELETE FROM holders WHERE holder = ?", (self.holder,))

    def stale_reservations(self, now: float, lease_s: float) -> list[StaleCharge]:
        """Reserved charges whose holder holds no live lease (it died, or crashed before completing them)."""
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT consumer, request_id, dataset, purpose, epsilon, delta, rho_units, product, created_at"
                " FROM charges c WHERE status = 'reserved' AND created_at < ? AND NOT EXISTS ("
                "  SELECT 1 FROM holders h WHERE h.holder = c.holder AND h.heartbeat >= ?)",
                (now - 1.0, now - lease_s)).fetchall()
        return [_stale(r, "reserved") for r in rows]

    def audit_unaudited(self, charge: StaleCharge, write: Callable[[sqlite3.Connection], None]) -> bool:
        """Run `write` (the charge's audit entry) if the charge still has no audit entry, in one transaction
        (several processes may find the same charge); True if it ran."""
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM entries WHERE consumer = ? AND request_id = ? AND charge = 'charged'",
                            (charge.key.consumer, charge.request_id)).fetchone():
                return False
            write(conn)
            return True

    def unaudited_charges(self) -> list[StaleCharge]:
        """Settled charges (released or failed) whose audit entry is missing (the audit tables share this
        database: an entry that records a charge has its consumer, request id and ``charge = 'charged'``)."""
        with self._connection() as conn:
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'entries'").fetchone():
                return []
            rows = conn.execute(
                "SELECT consumer, request_id, dataset, purpose, epsilon, delta, rho_units, product, created_at,"
                " status FROM charges c WHERE status IN ('released', 'failed') AND NOT EXISTS ("
                "  SELECT 1 FROM entries e WHERE e.consumer = c.consumer AND e.request_id = c.request_id"
                "  AND e.charge = 'charged')").fetchall()
        return [_stale(r[:9], str(r[9])) for r in rows]

    def spent(self, key: GrantKey) -> PrivacyLoss:
        """Returns the total privacy loss charged on a grant (zero if nothing was charged).

        Args:
            key: The grant.

        Returns:
            The running total, including reserved and failed charges.
        """
        with self._connection() as conn:
            return self._read_spent(conn, key)

    def reserve(
        self,
        key: GrantKey,
        *,
        request_id: str,
        fingerprint: str,
        cost: PrivacyLoss,
        budget: PrivacyLoss,
        durable: bool = True,
        owner: CapCounts | None = None,
    ) -> Reservation | PriorRelease:
        """Durably charges ``cost`` for a request, or returns the answer it already got.

        Args:
            key: The grant to charge.
            request_id: The client's idempotency key, unique per consumer.
            fingerprint: A digest of everything that determines the answer (dataset, purpose,
                query, privacy parameters); a retry must present the same one.
            cost: The privacy loss of answering.
            budget: The total loss the grant allows.
            durable: False: commit without an fsync of its own; the caller's next ``complete``,
                ``fail`` or ``release_unused`` makes it durable, and nothing may be released before.
            owner: What the charge counts on the data owner's cap (stored with it, so the governor's cap
                levels see it); default: ``owner_counts(cost)``.

        Returns:
            A ``Reservation`` once the charge is committed, or a ``PriorRelease`` if this
            request id was already answered.

        Raises:
            InvalidArgumentError: request_id or fingerprint is empty.
            RequestIdConflictError: The request id was used for a different request.
            RequestInProgressError: The request id was charged and did not complete.
            PrivacyBudgetExhaustedError: The cost exceeds the remaining budget; nothing charged.
        """
        if not request_id:
            raise InvalidArgumentError("request_id must not be empty", field="request_id")
        if not fingerprint:
            raise InvalidArgumentError("fingerprint must not be empty", field="fingerprint")
        with self._transaction(durable=durable) as conn:
            row = conn.execute(
                "SELECT dataset, purpose, fingerprint, status, response FROM charges"
                " WHERE consumer = ? AND request_id = ?",
                (key.consumer, request_id),
            ).fetchone()
            if row is not None:
                dataset, purpose, stored_fingerprint, status, response = row
                same_request = (dataset, purpose, stored_fingerprint) == (
                    key.dataset,
                    key.purpose,
                    fingerprint,
                )
                if not same_request:
                    raise RequestIdConflictError(
                        "request_id was already used for a different request",
                        requestId=request_id,
                    )
                if status == "released":
                    if not isinstance(response, bytes):
                        raise GatewayInternalError("released charge has no stored response")
                    return PriorRelease(request_id=request_id, response=response)
                raise RequestInProgressError(
                    "the request with this request_id was charged and did not complete;"
                    " a new request_id is needed",
                    requestId=request_id,
                    status=str(status),
                )

            spent = self._read_spent(conn, key)
            new_epsilon = spent.epsilon + cost.epsilon
            new_delta = spent.delta + cost.delta
            if new_epsilon > budget.epsilon or new_delta > budget.delta:
                raise _exhausted(
                    key, cost, spent, budget, epsilon_exceeded=new_epsilon > budget.epsilon
                )

            now = time.time()
            cost_rho = to_units(cost.rho, RHO_UNITS, up=True)
            conn.execute(
                "INSERT INTO charges (consumer, request_id, dataset, purpose, fingerprint,"
                " epsilon, delta, status, response, created_at, updated_at,"
                " epsilon_units, delta_units, rho_units, zcdp_units, no_zcdp, conversion_delta_units, "
                + ", ".join(_CAP_COLUMNS) + ")"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'reserved', NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.consumer,
                    request_id,
                    key.dataset,
                    key.purpose,
                    fingerprint,
                    cost.epsilon,
                    cost.delta,
                    now,
                    now,
                    *_units(cost),
                    cost_rho,
                    *zcdp_columns(*_units(cost), cost_rho),
                    to_units(cost.conversion_delta, DELTA_UNITS, up=True),
                    *(owner or owner_counts(cost)).as_row(),
                ),
            )
            conn.execute(
                "INSERT INTO spend (consumer, dataset, purpose, epsilon, delta)"
                " VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (consumer, dataset, purpose)"
                " DO UPDATE SET epsilon = excluded.epsilon, delta = excluded.delta",
                (key.consumer, key.dataset, key.purpose, new_epsilon, new_delta),
            )
        return Reservation(
            request_id=request_id,
            key=key,
            cost=cost,
            spent_after=PrivacyLoss(new_epsilon, new_delta),
        )

    def complete(
        self,
        key: GrantKey,
        request_id: str,
        response: bytes,
        *,
        also: Sequence[Callable[[sqlite3.Connection], None]] = (),
    ) -> None:
        """Marks a reserved charge as released and stores the answer for replays.

        Args:
            key: The grant the charge was made against.
            request_id: The request id of the reservation.
            response: The serialized answer exactly as released to the client.
            also: Writes to other tables of this database (the release cache, the request outcome)
                that commit in the same transaction, so one fsync makes all of them durable.

        Raises:
            GatewayInternalError: There is no reserved charge for this request, or a write failed
                (then nothing of the transaction is stored).
        """
        with self._transaction() as conn:
            self._require_reserved(conn, key, request_id)
            conn.execute(
                "UPDATE charges SET status = 'released', response = ?, updated_at = ?"
                " WHERE consumer = ? AND request_id = ?",
                (bytes(response), time.time(), key.consumer, request_id),
            )
            for write in also:
                write(conn)

    def fail(self, key: GrantKey, request_id: str, *,
             also: Sequence[Callable[[sqlite3.Connection], None]] = ()) -> None:
        """Marks a reserved charge as failed; the data was touched, so the charge stays.

        Args:
            key: The grant the charge was made against.
            request_id: The request id of the reservation.
            also: Writes to other tables of this database (the call's audit entry) that commit with it.

        Raises:
            GatewayInternalError: There is no reserved charge for this request.
        """
        with self._transaction() as conn:
            self._require_reserved(conn, key, request_id)
            conn.execute(
                "UPDATE charges SET status = 'failed', updated_at = ?"
                " WHERE consumer = ? AND request_id = ?",
                (time.time(), key.consumer, request_id),
            )
            for write in also:
                write(conn)

    def release_unused(self, key: GrantKey, request_id: str) -> None:
        """Refunds a reserved charge whose query never touched the data (sandbox unreachable).

        The charge is deleted and its cost subtracted from the running total, so the request id
        can be used again.

        Args:
            key: The grant the charge was made against.
            request_id: The request id of the reservation.

        Raises:
            GatewayInternalError: There is no reserved charge for this request.
        """
        with self._transaction() as conn:
            cost = self._require_reserved(conn, key, request_id)
            conn.execute(
                "DELETE FROM charges WHERE consumer = ? AND request_id = ?",
                (key.consumer, request_id),
            )
            (remaining,) = conn.execute(
                "SELECT count(*) FROM charges WHERE consumer = ? AND dataset = ? AND purpose = ?",
                (key.consumer, key.dataset, key.purpose),
            ).fetchone()
            spent = self._read_spent(conn, key)
            if remaining == 0:
                new_epsilon, new_delta = 0.0, 0.0
            else:
                new_epsilon = max(0.0, spent.epsilon - cost.epsilon)
                new_delta = max(0.0, spent.delta - cost.delta)
            conn.execute(
                "UPDATE spend SET epsilon = ?, delta = ?"
                " WHERE consumer = ? AND dataset = ? AND purpose = ?",
                (new_epsilon, new_delta, key.consumer, key.dataset, key.purpose),
            )

    def history(self, key: GrantKey) -> list[ChargeRecord]:
        """Lists the charges on a grant, oldest first (refunded charges are gone).

        Args:
            key: The grant.

        Returns:
            One record per charge.
        """
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT request_id, epsilon, delta, status, created_at FROM charges"
                " WHERE consumer = ? AND dataset = ? AND purpose = ?"
                " ORDER BY created_at, rowid",
                (key.consumer, key.dataset, key.purpose),
            ).fetchall()
        return [
            ChargeRecord(
                request_id=request_id,
                cost=PrivacyLoss(epsilon, delta),
                status=cast(ChargeStatus, status),
                created_at=created_at,
            )
            for request_id, epsilon, delta, status, created_at in rows
        ]

    def verify(self) -> None:
        """Checks every running total against the sum of its charges.

        Raises:
            GatewayInternalError: A total differs from its charges by more than 1e-9 relative,
                or charges exist on a grant without a total.
        """
        with self._connection() as conn:
            conn.execute("BEGIN")  # one consistent snapshot for both tables
            try:
                totals = {
                    (c, d, p): (e, dl)
                    for c, d, p, e, dl in conn.execute(
                        "SELECT consumer, dataset, purpose, epsilon, delta FROM spend"
                    )
                }
                sums: dict[tuple[str, str, str], tuple[list[float], list[float]]] = {}
                for c, d, p, e, dl in conn.execute(
                    "SELECT consumer, dataset, purpose, epsilon, delta FROM charges"
                ):
                    eps_list, delta_list = sums.setdefault((c, d, p), ([], []))
                    eps_list.append(e)
                    delta_list.append(dl)
            finally:
                conn.execute("COMMIT")
        for grant in totals.keys() | sums.keys():
            total_eps, total_delta = totals.get(grant, (0.0, 0.0))
            eps_list, delta_list = sums.get(grant, ([], []))
            if not (
                _agrees(total_eps, math.fsum(eps_list))
                and _agrees(total_delta, math.fsum(delta_list))
            ):
                raise GatewayInternalError("privacy ledger totals disagree with their charges")

    # -- issue-gov: nested, periodic budgets (member, organisation, data owner's cap) ------------

    def reserve_nested(
        self,
        key: GrantKey,
        *,
        request_id: str,
        fingerprint: str,
        cost: PrivacyLoss,
        limits: Sequence[BudgetLimit],
        metering: Metering,
        now: float,
        durable: bool = True,
        owner: CapCounts | None = None,
        refuse: GatewayError | None = None,
        product: str = "query",
    ) -> Reservation | PriorRelease:
        """Durably charges ``cost`` if it fits every limit for its period, or replays a prior answer.

        One ``BEGIN IMMEDIATE`` transaction reads, for each limit, the exact sum of the charges in
        that limit's window (indexed ``SUM`` over integer units), checks ``spent + cost <= budget``
        for all of them, and writes the charge; so no thread or process can slip a charge in between
        the check and the write. Limits are checked in the given order (member, organisation,
        data owner's cap, its lifetime cap) and the first one that cannot pay is named in the refusal.
        What the charge costs at each level is `_level_cost`: the data owner's levels count ``owner``
        (the owner's rule), the grant's levels ``cost``.

        Args:
            key: The member's grant (consumer = member identity).
            request_id: The client's idempotency key, unique per consumer.
            fingerprint: Digest of everything that determines the answer.
            cost: The privacy loss of answering (converted to units rounding up).
            limits: The budgets that must all hold, each with its level and period window.
            metering: The organisation and what the charge is billed as (stored with the charge).
            now: The charge's time (seconds since the epoch); it decides which periods it counts in.
            durable: As for ``reserve``.
            owner: What the charge counts on the data owner's cap (default ``owner_counts(cost)``).
            refuse: Raised instead of charging when the request is not a replay (the owner's cap cannot
                count this release: decided by the caller, which knows the owner's definition).

        Returns:
            A ``Reservation`` (``spent_after`` is the grant's lifetime total) or a ``PriorRelease``.

        Raises:
            InvalidArgumentError: request_id or fingerprint is empty.
            RequestIdConflictError: The request id was used for a different request.
            RequestInProgressError: The request id was charged and did not complete.
            PrivacyBudgetExhaustedError: A limit cannot pay (metadata ``level``); nothing charged.
        """
        if not request_id:
            raise InvalidArgumentError("request_id must not be empty", field="request_id")
        if not fingerprint:
            raise InvalidArgumentError("fingerprint must not be empty", field="fingerprint")
        cost_eps, cost_delta = _units(cost)
        cost_rho = to_units(cost.rho, RHO_UNITS, up=True)
        conversion = to_units(cost.conversion_delta, DELTA_UNITS, up=True)
        owner = owner or owner_counts(cost)
        with self._transaction(durable=durable) as conn:
            prior = self._prior(conn, key, request_id, fingerprint)
            if prior is not None:
                return prior
            if refuse is not None:
                raise refuse
            after: list[tuple[int, int, int]] = []
            for limit in limits:
                spent_eps, spent_delta, spent_rho = self._window_units(conn, limit, key, metering.organization)
                add_eps, add_delta, add_rho, uncounted = _level_cost(limit, cost_eps, cost_delta, cost_rho,
                                                                     conversion, owner)
                after.append((spent_eps + add_eps, spent_delta + add_delta, spent_rho + add_rho))
                budget_delta = to_units(limit.budget.delta, DELTA_UNITS, up=False)
                if limit.measure == "rho":  # a zCDP level (grant or owner's cap): rho and its delta
                    spent_m, cost_m = spent_rho, add_rho
                    budget_m = to_units(limit.budget.rho, RHO_UNITS, up=False)
                else:
                    spent_m, cost_m = spent_eps, add_eps
                    budget_m = to_units(limit.budget.epsilon, EPSILON_UNITS, up=False)
                owner_level = limit.level in _OWNER_LEVELS
                if uncounted:  # the caller refuses such a release first (`refuse`); never charge it
                    cost_m = budget_m + 1
                if spent_m + cost_m > budget_m or spent_delta + add_delta > budget_delta:
                    raise _nested_exhausted(
                        key, limit, cost, spent_m, spent_delta, budget_m, budget_delta,
                        epsilon_exceeded=spent_m + cost_m > budget_m,
                        level_cost=(cost_m, add_delta) if owner_level else None,
                    )
            spent = self._read_spent(conn, key)
            new_epsilon, new_delta = spent.epsilon + cost.epsilon, spent.delta + cost.delta
            conn.execute(
                "INSERT INTO charges (consumer, request_id, dataset, purpose, fingerprint, epsilon,"
                " delta, status, response, created_at, updated_at, organization, epsilon_units,"
                " delta_units, use_class, data_owner, request_units, price_per_request_unit,"
                " price_per_epsilon, currency, rho_units, zcdp_units, no_zcdp, conversion_delta_units, product,"
                " holder, "
                + ", ".join(_CAP_COLUMNS) + ")"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'reserved', NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?,"
                " ?, ?, ?, ?, ?, ?, ?, ?)",
                (key.consumer, request_id, key.dataset, key.purpose, fingerprint, cost.epsilon,
                 cost.delta, now, now, metering.organization, cost_eps, cost_delta,
                 metering.use_class, metering.data_owner, metering.request_units,
                 metering.price_per_request_unit, metering.price_per_epsilon, metering.currency,
                 cost_rho, *zcdp_columns(cost_eps, cost_delta, cost_rho), conversion, product, self.holder,
                 *owner.as_row()),
            )
            conn.execute(
                "INSERT INTO spend (consumer, dataset, purpose, epsilon, delta) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (consumer, dataset, purpose)"
                " DO UPDATE SET epsilon = excluded.epsilon, delta = excluded.delta",
                (key.consumer, key.dataset, key.purpose, new_epsilon, new_delta),
            )
        return Reservation(request_id, key, cost, PrivacyLoss(new_epsilon, new_delta), tuple(after), now)

    def window_spent(self, limit: BudgetLimit, key: GrantKey, organization: str) -> tuple[int, int, int]:
        """Exact (epsilon units, delta units, rho units) charged in ``limit``'s window at its level."""
        with self._connection() as conn:
            return self._window_units(conn, limit, key, organization)

    def oldest_in_window(self, limit: BudgetLimit, key: GrantKey, organization: str) -> float | None:
        """The time of the oldest charge counting against ``limit`` (rolling periods refresh from it)."""
        where, args = _scope(limit, key, organization)
        with self._connection() as conn:
            (oldest,) = conn.execute(f"SELECT min(created_at) FROM charges WHERE {where}", args).fetchone()
        return None if oldest is None else float(oldest)

    def charges_between(self, start: float | None, end: float | None) -> list[dict[str, object]]:
        """Every charge (reserved, released or failed; refunds are gone) made in [start, end), as dicts."""
        where, args = "1 = 1", list[object]()
        if start is not None:
            where, args = where + " AND created_at >= ?", [*args, start]
        if end is not None:
            where, args = where + " AND created_at < ?", [*args, end]
        with self._connection() as conn:
            cur = conn.execute(
                "SELECT consumer, request_id, dataset, purpose, status, created_at, organization,"
                " epsilon, delta, epsilon_units, delta_units, use_class, data_owner, request_units,"
                f" price_per_request_unit, price_per_epsilon, currency FROM charges WHERE {where}"
                " ORDER BY created_at, rowid",
                args,
            )
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def use_by_month(self, datasets: Sequence[str]) -> list[tuple[str, str, str, str, int, float, float, int]]:
        """Settled charges (released or failed) on `datasets` as (dataset, month 'YYYY-MM' UTC, purpose, status,
        count, epsilon, delta, rho units), for the public transparency report (no consumer in it)."""
        if not datasets:
            return []
        marks = ", ".join("?" for _ in datasets)
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT dataset, strftime('%Y-%m', created_at, 'unixepoch'), purpose, status, count(*),"
                " total(epsilon), total(delta), total(rho_units) FROM charges"
                f" WHERE status IN ('released', 'failed') AND dataset IN ({marks})"
                " GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4", tuple(datasets)).fetchall()
        return [(str(d), str(m), str(p), str(st), int(n), float(e), float(dl), int(r))
                for d, m, p, st, n, e, dl, r in rows]

    def stored_response(self, consumer: str, request_id: str) -> bytes | None:
        """The answer stored for `consumer`'s released request `request_id` (None: no such release)."""
        with self._connection() as conn:
            row = conn.execute(
                "SELECT response FROM charges WHERE consumer = ? AND request_id = ? AND status = 'released'",
                (consumer, request_id)).fetchone()
        return bytes(row[0]) if row is not None and isinstance(row[0], bytes) else None

    def verify_units(self) -> None:
        """Checks that every charge's exact units cover its float cost (they never round down).

        Raises:
            GatewayInternalError: a charge's units are below its cost.
        """
        with self._connection() as conn:
            for eps, delta, eu, du in conn.execute(
                "SELECT epsilon, delta, epsilon_units, delta_units FROM charges"
            ):
                need_eps, need_delta = _units(PrivacyLoss(eps, delta))
                if eu < need_eps or du < need_delta:
                    raise GatewayInternalError("privacy ledger units disagree with their charges")

    def _prior(
        self, conn: sqlite3.Connection, key: GrantKey, request_id: str, fingerprint: str
    ) -> PriorRelease | None:
        row = conn.execute(
            "SELECT dataset, purpose, fingerprint, status, response FROM charges"
            " WHERE consumer = ? AND request_id = ?",
            (key.consumer, request_id),
        ).fetchone()
        if row is None:
            return None
        dataset, purpose, stored_fingerprint, status, response = row
        if (dataset, purpose, stored_fingerprint) != (key.dataset, key.purpose, fingerprint):
            raise RequestIdConflictError(
                "request_id was already used for a different request", requestId=request_id
            )
        if status == "released":
            if not isinstance(response, bytes):
                raise GatewayInternalError("released charge has no stored response")
            return PriorRelease(request_id=request_id, response=response)
        if status == "failed":
            raise RequestFailedError(
                "the request with this request_id failed after it was charged; its cost stays charged;"
                " a new request_id is needed",
                requestId=request_id, status="failed",
            )
        raise RequestInProgressError(
            "the request with this request_id is in progress; retry with the same request_id shortly",
            requestId=request_id,
            status=str(status),
        )

    @staticmethod
    def _window_units(
        conn: sqlite3.Connection, limit: BudgetLimit, key: GrantKey, organization: str
    ) -> tuple[int, int, int]:
        """Exact (epsilon, delta, rho) units charged in ``limit``'s window at its level, from the buckets,
        as the level counts them (`_level_cost` is the same rule for one charge):

        * a grant's epsilon level: epsilon, and delta with each zCDP charge's conversion delta (a charge made
          while the grant was zcdp is (epsilon at that delta, the grant's delta)-DP);
        * a grant's rho level: zCDP charges' rho, plus earlier pure charges (made before the operator
          switched the grant to zcdp) as epsilon^2 / 2 (OpenDP's make_pureDP_to_zCDP, BS16 Prop. 1.4); an
          approximate-DP charge (epsilon, delta > 0) has no such conversion in OpenDP, so while one is in the
          window the level counts as spent;
        * the data owner's levels: the charges' counts on the owner's cap in its measure (`cap_*`, from
          `sandbox.pricing.cap_rules`); a charge with no count in that measure marks the window as spent.
        """
        if limit.level == "member_product":  # few charges (models): summed directly over the index
            where = "consumer = ? AND dataset = ? AND purpose = ? AND product = ?"
            args: list[object] = [key.consumer, key.dataset, key.purpose, limit.product]
            if limit.window.start is not None:
                where, args = where + " AND created_at >= ?", [*args, limit.window.start]
            if limit.window.end is not None:
                where, args = where + " AND created_at < ?", [*args, limit.window.end]
            e, d = conn.execute(f"SELECT coalesce(sum(epsilon_units), 0), coalesce(sum(delta_units), 0)"
                                f" FROM charges WHERE {where}", args).fetchone()
            return int(e), int(d), 0
        sums = _window_sums(conn, limit, key, organization)
        if limit.level in _OWNER_LEVELS:
            eps, delta, rho = sums["cap_epsilon_units"], sums["cap_delta_units"], sums["cap_rho_units"]
            if limit.measure == "rho":
                delta = sums["cap_rho_delta_units"]
                if sums["cap_no_rho"]:
                    rho = max(rho, to_units(limit.budget.rho, RHO_UNITS, up=False))
            elif sums["cap_no_epsilon"]:
                eps = max(eps, to_units(limit.budget.epsilon, EPSILON_UNITS, up=False))
            return eps, delta, rho
        eps, delta = sums["epsilon_units"], sums["delta_units"]
        if limit.measure != "rho":
            return eps, delta + sums["conversion_delta_units"], sums["rho_units"]
        zcdp_u = sums["zcdp_units"]
        if sums["no_zcdp"]:
            zcdp_u = max(zcdp_u, to_units(limit.budget.rho, RHO_UNITS, up=False))
        return eps, delta, zcdp_u

    def owner_sums(self, dataset: str, start: float | None, end: float | None) -> CapSums:
        """What the charges on `dataset` in [start, end) count on the data owner's cap, in both definitions
        (the same sums the sandbox's cap ledger keeps; `sandbox.pricing.cap_rules.CapSums`)."""
        with self._connection() as conn:
            (scope,) = conn.execute("SELECT json_array('d', ?)", (dataset,)).fetchone()
            sums = _bucketed_sums(conn, scope, "dataset = ?", [dataset], start, end, _CAP_COLUMNS)
        return CapSums(*sums)

    def organization_units(self, organization: str, start: float | None, end: float | None) -> int:
        """Exact epsilon units an organisation was charged on all its grants in [start, end) (buckets)."""
        with self._connection() as conn:
            (scope,) = conn.execute("SELECT json_array('O', ?)", (organization,)).fetchone()
            return _bucketed_sums(conn, scope, "organization = ?", [organization], start, end,
                                  ("epsilon_units",))[0]

    def verify_buckets(self) -> None:
        """Checks every spending bucket against the charges it sums (recomputed from the charges table).

        Raises:
            GatewayInternalError: a bucket differs from its charges.
        """
        cols = ", ".join(f"sum({c})" for c in _UNIT_COLUMNS)
        with self._connection() as conn:
            conn.execute("BEGIN")  # one snapshot of both tables
            try:
                stored = {
                    (scope, width, bucket): tuple(vals)
                    for scope, width, bucket, *vals in conn.execute(
                        f"SELECT scope, width, bucket, {', '.join(_UNIT_COLUMNS)}, charges FROM spend_buckets"
                        " WHERE charges != 0")
                }
                expected = {}
                for scope in _SCOPES.values():
                    for width, bucket in BUCKET_SQL.items():
                        sc, b = scope.format(p=""), bucket.format(p="")
                        for row in conn.execute(
                            f"SELECT {sc}, {width}, {b}, {cols}, count(*) FROM charges GROUP BY 1, 2, 3"
                        ):
                            expected[(row[0], row[1], row[2])] = tuple(row[3:])
            finally:
                conn.execute("COMMIT")
        if stored != expected:
            raise GatewayInternalError("privacy ledger spending buckets disagree with their charges")

    # -- end issue-gov ---------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the ledger; later calls raise ``GatewayInternalError``. Idempotent."""
        with self._lock:
            self._closed = True
            anchor, self._anchor = self._anchor, None
        self._pool.close()
        if anchor is not None:
            anchor.close()

    def __enter__(self) -> Ledger:
        """Returns the ledger itself."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Closes the ledger."""
        self.close()

    # -- internals -------------------------------------------------------------------------

    def _open(self, *, check_same_thread: bool = True) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path,
            timeout=self._busy_timeout_s,
            isolation_level=None,
            check_same_thread=check_same_thread,
        )
        try:
            conn.execute("PRAGMA synchronous = FULL")
        except BaseException:
            conn.close()
            raise
        return conn

    def _initialize(self, conn: sqlite3.Connection) -> None:
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            raise GatewayInternalError("privacy ledger could not switch to WAL mode")
        conn.execute("BEGIN IMMEDIATE")
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version not in (0, 1, 2, 3, 4, 5, 6, _SCHEMA_VERSION):
                raise GatewayInternalError("privacy ledger has an unknown schema version")
            if version == 1:
                _migrate_v1(conn)  # issue-gov
            if version in (1, 2):
                conn.execute("ALTER TABLE charges ADD COLUMN rho_units INTEGER NOT NULL DEFAULT 0"
                             " CHECK (rho_units >= 0)")
            if version in (1, 2, 3):
                _migrate_v3(conn)
            if version in (1, 2, 3, 4):
                _migrate_v4(conn)
            columns = {row[1] for row in conn.execute("PRAGMA table_info(charges)")}
            if version in (1, 2, 3, 4, 5) and "product" not in columns:
                conn.execute("ALTER TABLE charges ADD COLUMN product TEXT NOT NULL DEFAULT 'query'")
            if version in (1, 2, 3, 4, 5, 6) and "holder" not in columns:
                conn.execute("ALTER TABLE charges ADD COLUMN holder TEXT NOT NULL DEFAULT ''")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            for statement in _BUCKETS_SCHEMA:
                conn.execute(statement)
            if version in (1, 2, 3, 4):
                _fill_buckets(conn)
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise GatewayInternalError("privacy ledger is closed")
        with self._pool.connection() as conn:
            yield conn

    @contextmanager
    def _transaction(self, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """Runs the body in BEGIN IMMEDIATE; commits on success, rolls back on any exception.

        Durable commits fsync the write-ahead log (``synchronous=FULL``, set on every transaction, so a
        pooled connection can never carry a lighter setting over); ``durable=False`` commits with
        ``synchronous=NORMAL`` (no fsync: see ``reserve``).
        """
        with self._connection() as conn:
            conn.execute("PRAGMA synchronous = FULL" if durable else "PRAGMA synchronous = NORMAL")
            try:
                with immediate(conn):
                    yield conn
            finally:
                if not durable:
                    conn.execute("PRAGMA synchronous = FULL")

    @staticmethod
    def _read_spent(conn: sqlite3.Connection, key: GrantKey) -> PrivacyLoss:
        row = conn.execute(
            "SELECT epsilon, delta FROM spend WHERE consumer = ? AND dataset = ? AND purpose = ?",
            (key.consumer, key.dataset, key.purpose),
        ).fetchone()
        if row is None:
            return PrivacyLoss(0.0, 0.0)
        return PrivacyLoss(row[0], row[1])

    @staticmethod
    def _require_reserved(conn: sqlite3.Connection, key: GrantKey, request_id: str) -> PrivacyLoss:
        row = conn.execute(
            "SELECT dataset, purpose, status, epsilon, delta FROM charges"
            " WHERE consumer = ? AND request_id = ?",
            (key.consumer, request_id),
        ).fetchone()
        if row is None or (row[0], row[1]) != (key.dataset, key.purpose):
            raise GatewayInternalError("privacy ledger has no charge for this request")
        if row[2] != "reserved":
            raise GatewayInternalError(f"privacy ledger charge is {row[2]}, not reserved")
        return PrivacyLoss(row[3], row[4])


@dataclass(frozen=True, slots=True)
class StaleCharge:
    """A charge the settler must settle or audit: its key, request id, cost and status."""

    key: GrantKey
    request_id: str
    cost: PrivacyLoss
    product: str
    created_at: float
    status: str


def _stale(row: Sequence[object], status: str) -> StaleCharge:
    consumer, request_id, dataset, purpose, eps, delta, rho_units, product, created = row
    return StaleCharge(GrantKey(str(consumer), str(dataset), str(purpose)), str(request_id),
                       PrivacyLoss(float(cast(float, eps)), float(cast(float, delta)),
                                   from_units(int(cast(int, rho_units)), RHO_UNITS)),
                       str(product), float(cast(float, created)), status)


def _agrees(total: float, recomputed: float) -> bool:
    return math.isclose(total, recomputed, rel_tol=_VERIFY_RELATIVE_TOLERANCE, abs_tol=1e-12)


def _exhausted(
    key: GrantKey,
    cost: PrivacyLoss,
    spent: PrivacyLoss,
    budget: PrivacyLoss,
    *,
    epsilon_exceeded: bool,
) -> PrivacyBudgetExhaustedError:
    remaining_epsilon = max(0.0, budget.epsilon - spent.epsilon)
    remaining_delta = max(0.0, budget.delta - spent.delta)
    if epsilon_exceeded:
        what, requested, remaining = "epsilon", cost.epsilon, remaining_epsilon
    else:
        what, requested, remaining = "delta", cost.delta, remaining_delta
    return PrivacyBudgetExhaustedError(
        f"the request costs {what} {requested!r} but only {remaining!r} remains"
        f" on dataset {key.dataset} for purpose {key.purpose}",
        requestedEpsilon=repr(cost.epsilon),
        remainingEpsilon=repr(remaining_epsilon),
        requestedDelta=repr(cost.delta),
        remainingDelta=repr(remaining_delta),
        dataset=key.dataset,
        purpose=key.purpose,
    )


# -- issue-gov: nested, periodic budgets ------------------------------------------------------------

BudgetLevel = Literal["member", "organization", "dataset_cap", "dataset_cap_lifetime", "member_product"]
_OWNER_LEVELS = frozenset({"dataset_cap", "dataset_cap_lifetime"})


@dataclass(frozen=True, slots=True)
class BudgetLimit:
    """One budget a charge must fit, for the current period.

    Attributes:
        level: 'member' (the member's own budget on the grant), 'organization' (all members of the
            organisation on the grant), 'dataset_cap' (the data owner's cap: everyone on the dataset) or
            'dataset_cap_lifetime' (the owner's lifetime cap), or 'member_product' (the member's charges of one
            product on the grant: a model grant's limit inside the organisation's grant).
        budget: What the level allows per period.
        window: The charges that count now (from ``Period.window(now)``).
        measure: What the level accounts: 'epsilon' (pure and approximate DP grants; an owner's epsilon
            cap) or 'rho' (a zCDP grant's member and organisation levels, an owner's rho cap: the sum of
            rho; delta is partition selection's). The owner's levels read what each charge counts on the
            owner's cap (`sandbox.pricing.cap_rules`), not the grant's numbers.
    """

    level: BudgetLevel
    budget: PrivacyLoss
    window: Window
    measure: Literal["epsilon", "rho"] = "epsilon"
    product: str = ""  # 'member_product': the product whose charges the level counts (a model grant's limit)


@dataclass(frozen=True, slots=True)
class Metering:
    """Who a charge is billed to and at what prices, stored with the charge (prices as decimal text)."""

    organization: str
    use_class: str = ""
    data_owner: str = ""
    request_units: int = 0
    price_per_request_unit: str = "0"
    price_per_epsilon: str = "0"
    currency: str = ""


def _units(cost: PrivacyLoss) -> tuple[int, int]:
    """A charge in exact units, rounded up (see ``sandbox.pricing.periods``)."""
    return to_units(cost.epsilon, EPSILON_UNITS, up=True), to_units(cost.delta, DELTA_UNITS, up=True)


def _scope(limit: BudgetLimit, key: GrantKey, organization: str) -> tuple[str, list[object]]:
    args: list[object]
    if limit.level == "member":
        where, args = "consumer = ? AND dataset = ? AND purpose = ?", [key.consumer, key.dataset, key.purpose]
    elif limit.level == "organization":
        where, args = "organization = ? AND dataset = ? AND purpose = ?", [organization, key.dataset, key.purpose]
    else:
        where, args = "dataset = ?", [key.dataset]
    if limit.window.start is not None:
        where, args = where + " AND created_at >= ?", [*args, limit.window.start]
    if limit.window.end is not None:
        where, args = where + " AND created_at < ?", [*args, limit.window.end]
    return where, args


def _window_sums(
    conn: sqlite3.Connection, limit: BudgetLimit, key: GrantKey, organization: str
) -> dict[str, int]:
    """The columns a level reads (`_GRANT_COLUMNS`, or `_CAP_COLUMNS` for the data owner's levels), summed
    over ``limit``'s scope and window; flags as 0 or 1."""
    level = limit.level if limit.level in _SCOPE_COLUMNS else "dataset_cap"
    summed: tuple[str, ...] = _CAP_COLUMNS if limit.level in _OWNER_LEVELS else _GRANT_COLUMNS
    tag, columns = _SCOPE_COLUMNS[level]
    values = {"consumer": key.consumer, "organization": organization, "dataset": key.dataset,
              "purpose": key.purpose}
    # the same json_array the triggers compute, so the key matches byte for byte
    (scope,) = conn.execute(f"SELECT json_array('{tag}', {', '.join('?' for _ in columns)})",
                            [values[c] for c in columns]).fetchone()
    where, args = _scope(BudgetLimit(limit.level, limit.budget, Window(None, None), limit.measure),
                         key, organization)
    sums = _bucketed_sums(conn, scope, where, args, limit.window.start, limit.window.end, summed)
    return {c: min(v, 1) if c in _FLAG_COLUMNS else v for c, v in zip(summed, sums, strict=True)}


def _level_cost(limit: BudgetLimit, eps: int, delta: int, rho: int, conversion: int, owner: CapCounts
                ) -> tuple[int, int, int, bool]:
    """(epsilon, delta, rho units, has no count) one charge adds at ``limit``'s level (`Ledger._window_units`
    reads the same for the charges in its window)."""
    if limit.level in _OWNER_LEVELS:
        if limit.measure == "rho":
            return owner.epsilon_units, owner.rho_delta_units, owner.rho_units, owner.no_rho
        return owner.epsilon_units, owner.delta_units, owner.rho_units, owner.no_epsilon
    if limit.measure == "rho":
        return eps, delta, rho, False
    return eps, delta + conversion, rho, False


def _bucketed_sums(
    conn: sqlite3.Connection, scope: str, where: str, args: list[object], start: float | None,
    end: float | None, columns: tuple[str, ...],
) -> list[int]:
    """Sums of `columns` over the charges of one bucket scope (`where` selects the same charges) in
    [start, end) (`sandbox.pricing.periods.window_queries`)."""
    totals = [0] * len(columns)
    for sql, params in window_queries(start, end, columns, buckets="spend_buckets", bucket_where="scope = ?",
                                      bucket_args=(scope,), charges="charges", charge_where=where,
                                      charge_args=tuple(args)):
        for i, v in enumerate(conn.execute(sql, params).fetchone()):
            totals[i] += int(v)
    return totals


def _migrate_v3(conn: sqlite3.Connection) -> None:
    """Schema 3 -> 4: the zCDP columns of existing charges (buckets are filled after the schema)."""
    conn.execute("ALTER TABLE charges ADD COLUMN zcdp_units INTEGER NOT NULL DEFAULT 0 CHECK (zcdp_units >= 0)")
    conn.execute("ALTER TABLE charges ADD COLUMN no_zcdp INTEGER NOT NULL DEFAULT 0 CHECK (no_zcdp IN (0, 1))")
    rows = conn.execute("SELECT rowid, epsilon_units, delta_units, rho_units FROM charges"
                        " WHERE epsilon_units > 0 OR rho_units > 0")
    conn.executemany("UPDATE charges SET zcdp_units = ?, no_zcdp = ? WHERE rowid = ?",
                     ((*zcdp_columns(int(e), int(d), int(r)), rowid) for rowid, e, d, r in rows.fetchall()))


def _migrate_v4(conn: sqlite3.Connection) -> None:
    """Schema 4 -> 5: conversion_delta_units and the owner's-cap counts of existing charges; the buckets are
    dropped here and rebuilt from the charges after the schema (they gain the new columns).

    An earlier charge counts on the owner's cap as the old rule counted it: its (epsilon, delta) units (for a
    zCDP charge: the epsilon at the grant's delta, without that delta, which is not recoverable), its rho as
    for a grant level (rho, epsilon^2 / 2 for pure, none for approximate DP). Its conversion delta is unknown
    and stays 0."""
    have = {r[1] for r in conn.execute("PRAGMA table_info(charges)")}
    for column in ("conversion_delta_units", *_CAP_COLUMNS):
        if column in have:
            continue
        check = "IN (0, 1)" if column in _FLAG_COLUMNS else ">= 0"
        conn.execute(f"ALTER TABLE charges ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0 CHECK ({column} {check})")
    rows = conn.execute("SELECT rowid, epsilon_units, delta_units, rho_units, zcdp_units, no_zcdp FROM charges")
    conn.executemany(
        "UPDATE charges SET cap_epsilon_units = ?, cap_delta_units = ?, cap_rho_units = ?, cap_rho_delta_units = ?,"
        " cap_no_rho = ? WHERE rowid = ?",
        ((e, d, z, d if r > 0 else 0, n, rowid) for rowid, e, d, r, z, n in rows.fetchall()))
    for trigger in ("charges_buckets_insert", "charges_buckets_delete", "charges_buckets_update"):
        conn.execute(f"DROP TRIGGER IF EXISTS {trigger}")
    conn.execute("DROP TABLE IF EXISTS spend_buckets")


def _fill_buckets(conn: sqlite3.Connection) -> None:
    """Build the spending buckets of a migrated ledger from its charges (the triggers keep them after)."""
    sums = ", ".join(f"sum({c})" for c in _UNIT_COLUMNS)
    for scope in _SCOPES.values():
        for width, bucket in BUCKET_SQL.items():
            conn.execute(
                f"INSERT INTO spend_buckets (scope, width, bucket, {', '.join(_UNIT_COLUMNS)}, charges)"
                f" SELECT {scope.format(p='')}, {width}, {bucket.format(p='')}, {sums}, count(*)"
                " FROM charges GROUP BY 1, 2, 3"
            )


def _migrate_v1(conn: sqlite3.Connection) -> None:
    """Schema 1 -> 2: add the new columns and fill the exact units of existing charges."""
    for column in (
        "organization TEXT NOT NULL DEFAULT ''",
        "epsilon_units INTEGER NOT NULL DEFAULT 0 CHECK (epsilon_units >= 0)",
        "delta_units INTEGER NOT NULL DEFAULT 0 CHECK (delta_units >= 0)",
        "use_class TEXT NOT NULL DEFAULT ''",
        "data_owner TEXT NOT NULL DEFAULT ''",
        "request_units INTEGER NOT NULL DEFAULT 0",
        "price_per_request_unit TEXT NOT NULL DEFAULT '0'",
        "price_per_epsilon TEXT NOT NULL DEFAULT '0'",
        "currency TEXT NOT NULL DEFAULT ''",
    ):
        conn.execute(f"ALTER TABLE charges ADD COLUMN {column}")
    rows = conn.execute("SELECT rowid, epsilon, delta FROM charges").fetchall()
    for rowid, eps, delta in rows:
        eu, du = _units(PrivacyLoss(eps, delta))
        conn.execute(
            "UPDATE charges SET epsilon_units = ?, delta_units = ?, organization = consumer WHERE rowid = ?",
            (eu, du, rowid),
        )


def _nested_exhausted(
    key: GrantKey,
    limit: BudgetLimit,
    cost: PrivacyLoss,
    spent_eps: int,
    spent_delta: int,
    budget_eps: int,
    budget_delta: int,
    *,
    epsilon_exceeded: bool,
    level_cost: tuple[int, int] | None = None,
) -> PrivacyBudgetExhaustedError:
    """The refusal naming the level. ``level_cost``: what the charge counts at the level, (amount, delta)
    units (the data owner's levels count the owner's rule, not the grant's numbers)."""
    rho = limit.measure == "rho"
    per = RHO_UNITS if rho else EPSILON_UNITS
    # For a rho level, `spent_eps`/`budget_eps` are in rho units.
    remaining_m = from_units(max(0, budget_eps - spent_eps), per)
    remaining_epsilon = 0.0 if rho else remaining_m
    remaining_delta = from_units(max(0, budget_delta - spent_delta), DELTA_UNITS)
    what = {"member": "your own budget", "organization": "your organisation's budget",
            "dataset_cap": "the data owner's cap on the dataset",
            "dataset_cap_lifetime": "the data owner's lifetime cap on the dataset",
            "member_product": f"your {limit.product} grant's limit"}[limit.level]
    when = "over its lifetime" if limit.level == "dataset_cap_lifetime" else "this period"
    measure = ("rho" if rho else "epsilon") if epsilon_exceeded else "delta"
    requested = {"rho": cost.rho, "epsilon": cost.epsilon, "delta": cost.delta}[measure]
    if level_cost is not None:
        requested = from_units(level_cost[1], DELTA_UNITS) if measure == "delta" else from_units(level_cost[0], per)
    remaining = remaining_delta if measure == "delta" else remaining_m
    extra = {"requestedRho": repr(cost.rho), "remainingRho": repr(remaining_m)} if rho else {}
    return PrivacyBudgetExhaustedError(
        f"the request costs {measure} {requested!r} but only"
        f" {remaining!r} remains of {what} {when} on dataset {key.dataset}",
        level=limit.level,
        **extra,
        requestedEpsilon=repr(cost.epsilon),
        remainingEpsilon=repr(remaining_epsilon),
        requestedDelta=repr(cost.delta),
        remainingDelta=repr(remaining_delta),
        dataset=key.dataset,
        purpose=key.purpose,
        periodStart=rfc3339(limit.window.start),
        refreshesAt=rfc3339(limit.window.end),
    )
