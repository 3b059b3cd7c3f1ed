"""The ledger's leases and settlement (`Ledger` inherits them; `gateway.path.settle` drives them).

Each gateway process holds a lease on the charges it reserves (`holder`, renewed by `heartbeat`); a reserved
charge whose holder's lease lapsed is settled by a settler. This module also audits a settled charge that has
no audit entry yet, resolves reservations left in doubt by a lost PostgreSQL connection, and checks that a
charge a call settles is still reserved (a charge settled under a lapsed lease is a final failure).
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from gateway.budgets.records import GrantKey, PrivacyLoss, StaleCharge
from gateway.errors import GatewayError, GatewayInternalError, RequestFailedError, StorageUnavailableError
from gateway.storage.pg import PgDatabase
from gateway.storage.sqlite import immediate

__all__ = ["LedgerLeases"]

log = logging.getLogger("gateway.budgets.ledger")


class LedgerLeases:
    """Leases, settlement and reservations in doubt; `Ledger` supplies the storage."""

    holder: str
    _path: Path | PgDatabase
    _in_doubt: list[tuple[GrantKey, str, float]]
    _in_doubt_lock: threading.Lock
    _connection: Callable[[], AbstractContextManager[sqlite3.Connection]]
    _transaction: Callable[..., AbstractContextManager[sqlite3.Connection]]
    _refund_in: Callable[[sqlite3.Connection, GrantKey, str, PrivacyLoss], None]

    def heartbeat(self, now: float | None = None) -> None:
        """Renew this process's lease on its reservations (a reserved charge of a live holder is in progress).

        The renewal does not queue behind this process's request writers (`_transaction`): under load that
        queue can be longer than the lease, and a live process whose lease expired has its reservations
        settled as failed under it. On PostgreSQL it is one autocommit statement on this process's own row
        (no write lock); on SQLite its own short ``BEGIN IMMEDIATE``, which waits only for the file's lock.
        """
        row = (self.holder, os.getpid(), socket.gethostname(), time.time() if now is None else now)
        upsert = ("INSERT INTO holders (holder, pid, host, heartbeat) VALUES (?, ?, ?, ?)"
                  " ON CONFLICT (holder) DO UPDATE SET heartbeat = excluded.heartbeat")
        with self._connection() as conn:
            if isinstance(self._path, PgDatabase):
                conn.execute(upsert, row)
                return
            with immediate(conn):
                conn.execute(upsert, row)
        try:
            self._resolve_in_doubt()
        except GatewayError as exc:
            log.warning("reservations in doubt not resolved yet (%s); retrying at the next renewal", exc.message)

    def release_lease(self) -> None:
        """Drop this process's lease (clean shutdown: its reservations are all settled by then)."""
        with self._transaction(durable=False) as conn:
            conn.execute("DELETE FROM holders WHERE holder = ?", (self.holder,))

    def audit_unaudited(self, charge: StaleCharge, write: Callable[[sqlite3.Connection], None]) -> bool:
        """Run `write` (the charge's audit entry) if the charge still has no audit entry, in one transaction
        (several processes may find the same charge); True if it ran."""
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM entries WHERE consumer = ? AND request_id = ? AND charge = 'charged'",
                            (charge.key.consumer, charge.request_id)).fetchone():
                return False
            write(conn)
            return True

    @contextmanager
    def _charging(self, key: GrantKey, request_id: str, created_at: float) -> Iterator[None]:
        """Around a reserving transaction. On PostgreSQL one that fails with a storage error may have committed
        all the same (the connection was lost after COMMIT left), leaving a reservation that nothing goes on
        with and that this live process's lease would keep open for ever (a retry gets REQUEST_IN_PROGRESS);
        the next `heartbeat` refunds it if it is there. Its ``created_at`` tells it from a reservation a retry
        made since (then it is left alone)."""
        try:
            yield
        except StorageUnavailableError:
            if isinstance(self._path, PgDatabase):
                with self._in_doubt_lock:
                    self._in_doubt.append((key, request_id, created_at))
            raise

    def _resolve_in_doubt(self) -> None:
        """Refund the reservations of `_charging` that committed, forget those that did not (taken off the list
        while being resolved, put back if storage fails again)."""
        with self._in_doubt_lock:
            mine, self._in_doubt = self._in_doubt, []
        try:
            while mine:
                key, request_id, created_at = mine[0]
                with self._transaction() as conn:
                    row = conn.execute("SELECT status, created_at, holder, epsilon, delta FROM charges"
                                       " WHERE consumer = ? AND request_id = ? AND dataset = ? AND purpose = ?",
                                       (key.consumer, request_id, key.dataset, key.purpose)).fetchone()
                    if row is not None and (row[0], row[1], row[2]) == ("reserved", created_at, self.holder):
                        self._refund_in(conn, key, request_id, PrivacyLoss(row[3], row[4]))
                        log.warning("refunded request %s: its reservation committed, but the gateway saw it fail",
                                    request_id)
                mine.pop(0)
        finally:
            with self._in_doubt_lock:
                self._in_doubt.extend(mine)

    @staticmethod
    def _require_reserved(conn: sqlite3.Connection, key: GrantKey, request_id: str) -> PrivacyLoss:
        """The cost of the reserved charge a call is about to settle (complete, fail, refund).

        Raises:
            RequestFailedError: a settler settled it as failed meanwhile (final; it stays charged).
            GatewayInternalError: there is no such charge, or it is not reserved.
        """
        row = conn.execute(
            "SELECT dataset, purpose, status, epsilon, delta FROM charges"
            " WHERE consumer = ? AND request_id = ?",
            (key.consumer, request_id),
        ).fetchone()
        if row is None or (row[0], row[1]) != (key.dataset, key.purpose):
            raise GatewayInternalError("privacy ledger has no charge for this request")
        if row[2] == "failed":
            # A settler (this process's or another replica's) found this process's lease expired -- the
            # process was frozen, starved or cut off from the storage for longer than the lease -- and
            # settled the charge as failed. That outcome is final: the answer is not released.
            raise RequestFailedError(
                "the request was settled as failed while its gateway did not renew its lease in time; its"
                " cost stays charged; a new request_id is needed", requestId=request_id, status="failed")
        if row[2] != "reserved":
            raise GatewayInternalError(f"privacy ledger charge is {row[2]}, not reserved")
        return PrivacyLoss(row[3], row[4])
