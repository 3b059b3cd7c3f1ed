"""The durable privacy-budget ledger: spend per (consumer, dataset, purpose) in WAL-mode SQLite.

Guarantees. Every state change runs in one ``BEGIN IMMEDIATE`` transaction on a connection opened
for that call, so the check "spent + cost <= budget" and the write of the charge are atomic with
respect to every other thread and every other process that opens the same file (SQLite's write
lock serializes them; waiting is bounded by ``busy_timeout_s``). ``reserve`` commits the charge
with ``synchronous=FULL`` before it returns, so a caller that releases an answer only after
``reserve`` returned has the charge on disk first, and it survives a crash or restart. A request
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
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from gateway.errors import (
    GatewayInternalError,
    InvalidArgumentError,
    PrivacyBudgetExhaustedError,
    RequestIdConflictError,
    RequestInProgressError,
)

__all__ = [
    "ChargeRecord",
    "ChargeStatus",
    "GrantKey",
    "Ledger",
    "PriorRelease",
    "PrivacyLoss",
    "Reservation",
]

ChargeStatus = Literal["reserved", "released", "failed"]

_SCHEMA_VERSION = 1
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
    PRIMARY KEY (consumer, request_id)
) STRICT;
CREATE INDEX IF NOT EXISTS charges_by_key ON charges (consumer, dataset, purpose, created_at);
"""


@dataclass(frozen=True, slots=True)
class PrivacyLoss:
    """An (epsilon, delta) privacy loss: epsilon >= 0, 0 <= delta < 1, both finite.

    Attributes:
        epsilon: The pure-DP part of the loss.
        delta: The approximate-DP part of the loss.
    """

    epsilon: float
    delta: float = 0.0

    def __post_init__(self) -> None:
        """Validates and normalizes both fields to float.

        Raises:
            ValueError: A field is not a real number, is not finite, or is out of range.
        """
        for name in ("epsilon", "delta"):
            value: object = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a real number, got {type(value).__name__}")
            as_float = float(value)
            if not math.isfinite(as_float):
                raise ValueError(f"{name} must be finite, got {as_float!r}")
            object.__setattr__(self, name, as_float)
        if self.epsilon < 0.0:
            raise ValueError(f"epsilon must be >= 0, got {self.epsilon!r}")
        if not 0.0 <= self.delta < 1.0:
            raise ValueError(f"delta must be in [0, 1), got {self.delta!r}")


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
    """A fresh charge that is now durable; the caller may run the query and release its answer.

    Attributes:
        request_id: The request id the charge was made for.
        key: The grant the charge was made against.
        cost: The privacy loss charged.
        spent_after: The total spent on ``key`` including this charge.
    """

    request_id: str
    key: GrantKey
    cost: PrivacyLoss
    spent_after: PrivacyLoss


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
    ``fork``. Every call opens its own connection, which costs about 0.5 ms over a long-lived one.
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
        self._path.parent.mkdir(parents=True, exist_ok=True)
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
    ) -> Reservation | PriorRelease:
        """Durably charges ``cost`` for a request, or returns the answer it already got.

        Args:
            key: The grant to charge.
            request_id: The client's idempotency key, unique per consumer.
            fingerprint: A digest of everything that determines the answer (dataset, purpose,
                query, privacy parameters); a retry must present the same one.
            cost: The privacy loss of answering.
            budget: The total loss the grant allows.

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
        with self._transaction() as conn:
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
            conn.execute(
                "INSERT INTO charges (consumer, request_id, dataset, purpose, fingerprint,"
                " epsilon, delta, status, response, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, 'reserved', NULL, ?, ?)",
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

    def complete(self, key: GrantKey, request_id: str, response: bytes) -> None:
        """Marks a reserved charge as released and stores the answer for replays.

        Args:
            key: The grant the charge was made against.
            request_id: The request id of the reservation.
            response: The serialized answer exactly as released to the client.

        Raises:
            GatewayInternalError: There is no reserved charge for this request.
        """
        with self._transaction() as conn:
            self._require_reserved(conn, key, request_id)
            conn.execute(
                "UPDATE charges SET status = 'released', response = ?, updated_at = ?"
                " WHERE consumer = ? AND request_id = ?",
                (bytes(response), time.time(), key.consumer, request_id),
            )

    def fail(self, key: GrantKey, request_id: str) -> None:
        """Marks a reserved charge as failed; the data was touched, so the charge stays.

        Args:
            key: The grant the charge was made against.
            request_id: The request id of the reservation.

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

    def close(self) -> None:
        """Closes the ledger; later calls raise ``GatewayInternalError``. Idempotent."""
        with self._lock:
            self._closed = True
            anchor, self._anchor = self._anchor, None
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
            if version not in (0, _SCHEMA_VERSION):
                raise GatewayInternalError("privacy ledger has an unknown schema version")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
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
        try:
            conn = self._open()
            try:
                yield conn
            finally:
                conn.close()
        except sqlite3.Error as exc:
            # The cause (locked past busy_timeout_s, disk full, corruption) stays in the log.
            raise GatewayInternalError("privacy ledger storage error") from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """Runs the body in BEGIN IMMEDIATE; commits on success, rolls back on any exception."""
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

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
