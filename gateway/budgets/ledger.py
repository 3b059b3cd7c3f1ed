"""The durable privacy-budget ledger: spend per (consumer, dataset, purpose) in WAL-mode SQLite or PostgreSQL.

On PostgreSQL (`gateway.storage.pg`, for gateway replicas) ``BEGIN IMMEDIATE`` takes the one write lock every
replica's write transactions share, so everything below holds across replicas as it does across processes on
one SQLite file; PostgreSQL commits are durable (``durable=False`` changes nothing there).

Guarantees. Every state change runs in one ``BEGIN IMMEDIATE`` transaction on a connection opened
for that call, so the check "spent + cost <= budget" and the write of the charge are atomic with
respect to every other thread and every other process that opens the same file (SQLite's write
lock serializes them; waiting is bounded by ``busy_timeout_s``). ``reserve`` commits the charge
and has the write-ahead log fsynced before it returns (group commit: one fsync, run outside the write
lock, covers every transaction committed before it began; `gateway.storage.sqlite.GroupSync`), so a
caller that releases an answer only after ``reserve`` returned has the charge on disk first, and it
survives a crash or restart. With ``durable=False`` (the query path) the reservation commits without its
own fsync: it is visible to every thread and process at once (admission stays exact) and survives a
process crash, and the next durable commit on this file (``complete``, ``fail``, ``release_unused``)
syncs the write-ahead log that holds it, so the caller must release nothing before one of those has
returned. Only a power loss or kernel crash between the two commits can lose the reservation, and then
nothing of that request has left the gateway. A request that would exceed the budget is refused and
writes nothing. Request ids are scoped per consumer;
a retried id with the same fingerprint replays the stored response (noise is never re-drawn), a
reused id with a different fingerprint is a conflict, and an id that was charged but never
completed cannot be retried. A charge is refunded only by ``release_unused`` (the data was never
touched); ``fail`` keeps it. The per-key running total in table ``spend`` is the source of truth
for admission; ``verify`` cross-checks it against the per-charge rows in table ``charges``.
Totals are IEEE doubles added in charge order, so admission compares exactly what ``spent``
reports (e.g. ten charges of 0.1 fit a budget of 1.0, but three of 0.1 do not fit 0.3).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from gateway.budgets.leases import LedgerLeases
from gateway.budgets.ledger_reads import LedgerReads
from gateway.budgets.ledger_schema import _CAP_COLUMNS, postgres_statements, sqlite_initialize
from gateway.budgets.records import (
    _OWNER_LEVELS,
    BudgetLimit,
    ChargeRecord,
    ChargeStatus,
    GrantKey,
    Metering,
    PriorRelease,
    PrivacyLoss,
    Reservation,
    StaleCharge,
    _exhausted,
    _nested_exhausted,
    _units,
    owner_counts,
    zcdp_columns,
)
from gateway.budgets.windows import _level_cost
from gateway.errors import (
    GatewayError,
    GatewayInternalError,
    InvalidArgumentError,
    RequestFailedError,
    RequestIdConflictError,
    RequestInProgressError,
    StorageUnavailableError,
)
from gateway.policy.periods import DELTA_UNITS, EPSILON_UNITS, RHO_UNITS, to_units
from gateway.storage.pg import PgDatabase, ensure_schema
from gateway.storage.sqlite import (
    ConnectionPool,
    GroupSync,
    group_sync,
    immediate,
    open_location,
    prepare_location,
    writer_queue,
)
from sandbox.pricing.cap_rules import CapCounts, pure_to_rho_units

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
    "StaleCharge",
    "pure_to_rho_units",
]

log = logging.getLogger("gateway.budgets.ledger")


def _busy() -> StorageUnavailableError:
    return StorageUnavailableError(
        "the privacy ledger is busy (no write turn within the busy timeout); retry with the same request id")


class Ledger(LedgerLeases, LedgerReads):
    """The durable privacy-budget ledger in one SQLite file or one PostgreSQL database.

    Safe to share between threads, and between processes that each open their own ``Ledger`` on the
    same file on one host (WAL needs a local filesystem, not NFS) or on the same PostgreSQL database
    from any host (`gateway.storage.pg`: write transactions hold one advisory lock). Create it after
    any ``fork``. Calls take a connection from a pool (a fresh one per call cost about 0.5 ms).
    """

    def __init__(self, path: Path | PgDatabase, *, busy_timeout_s: float = 30.0) -> None:
        """Opens (creating if needed) the ledger file, its directories and its schema.

        Args:
            path: The SQLite file, usually inside the gateway's state directory, or a PostgreSQL database.
            busy_timeout_s: How long a call waits for another writer before it fails.

        Raises:
            ValueError: busy_timeout_s is not positive.
            GatewayInternalError: The file exists but is not a ledger of a known version.
        """
        if not busy_timeout_s > 0:
            raise ValueError(f"busy_timeout_s must be > 0, got {busy_timeout_s!r}")
        self._path = path if isinstance(path, PgDatabase) else Path(path)
        self._busy_timeout_s = float(busy_timeout_s)
        self._lock = threading.Lock()
        self._closed = False
        # This process's lease on its reservations (see `heartbeat` and `gateway.path.settle`).
        self.holder = uuid.uuid4().hex
        # Reservations whose transaction failed with a storage error but may have committed (see `_charging`).
        self._in_doubt: list[tuple[GrantKey, str, float]] = []
        self._in_doubt_lock = threading.Lock()
        prepare_location(self._path)
        self._writers = writer_queue(self._path)  # this process's writers of the database, in arrival order
        # SQLite: durable commits share fsyncs of the WAL, outside the write lock (group commit).
        self._sync: GroupSync | None = None if isinstance(self._path, PgDatabase) else group_sync(self._path)
        self._pool = ConnectionPool(
            lambda: self._open(check_same_thread=False),
            lambda: StorageUnavailableError("the privacy ledger's storage failed; retry with the same request id"),
        )
        # The anchor connection is never used for queries. Holding it open keeps the WAL and its
        # index alive, so closing a per-call connection does not checkpoint and delete the WAL.
        # (PostgreSQL has no WAL to keep: its schema is created on a pooled connection, no anchor is held.)
        self._anchor: sqlite3.Connection | None = None
        if isinstance(self._path, PgDatabase):
            with self._pool.connection() as conn:  # a storage failure: StorageUnavailableError
                self._initialize(conn)
            return
        self._anchor = self._open(check_same_thread=False)
        try:
            self._initialize(self._anchor)
        except BaseException:
            self._anchor.close()
            self._anchor = None
            raise

    @property
    def path(self) -> Path | PgDatabase:
        """The SQLite file or PostgreSQL database this ledger lives in."""
        return self._path

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
        now = time.time()
        with self._charging(key, request_id, now), self._transaction(durable=durable) as conn:
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
            RequestFailedError: A settler settled the charge as failed (this process's lease expired).
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
            RequestFailedError: The charge is already settled as failed (by a settler).
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
            RequestFailedError: The charge is already settled as failed (by a settler).
            GatewayInternalError: There is no reserved charge for this request.
        """
        with self._transaction() as conn:
            self._refund_in(conn, key, request_id, self._require_reserved(conn, key, request_id))

    def _refund_in(self, conn: sqlite3.Connection, key: GrantKey, request_id: str, cost: PrivacyLoss) -> None:
        """Delete a reserved charge and take its cost off the grant's running total, in the caller's transaction."""
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
        with self._charging(key, request_id, now), self._transaction(durable=durable) as conn:
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
        return open_location(self._path, busy_timeout_s=self._busy_timeout_s)

    def _initialize(self, conn: sqlite3.Connection) -> None:
        if isinstance(self._path, PgDatabase):
            ensure_schema(conn, postgres_statements())
            return
        sqlite_initialize(conn)

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

        A durable transaction is on disk before the ``with`` statement ends. On SQLite it commits with
        ``synchronous=NORMAL`` (its frames written to the WAL, no fsync) and gives up the write lock; then one
        fsync of the WAL covers it and every other transaction committed before that fsync began (`GroupSync`:
        group commit), so concurrent writers neither fsync one by one nor hold the lock while the disk
        syncs. ``durable=False`` skips that wait (see ``reserve``): the next durable commit's fsync covers it.
        ``synchronous`` is set on every transaction, so a pooled connection never carries another setting over.

        Raises:
            StorageUnavailableError: the fsync failed (the commit is not known to be on disk).
        """
        sync = self._sync if durable else None
        with self._writers.turn(self._busy_timeout_s, _busy), self._connection() as conn:
            light = not durable or sync is not None
            conn.execute("PRAGMA synchronous = NORMAL" if light else "PRAGMA synchronous = FULL")
            try:
                with immediate(conn):
                    yield conn
            finally:
                if light:
                    conn.execute("PRAGMA synchronous = FULL")
            ticket = sync.committed() if sync is not None else 0
        if sync is not None:
            sync.wait(ticket, lambda: StorageUnavailableError(
                "the privacy ledger's storage failed to sync; retry with the same request id"))
