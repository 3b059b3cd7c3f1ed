"""Every charge gets a definite outcome and an audit entry, whatever crashed: the settler.

Each gateway process holds a lease on the charges it reserves (`Ledger.holder`, renewed every
`interval_s` in the ledger's `holders` table). A reserved charge whose holder's lease is older than
`lease_s` belongs to a process that died, or that lost its storage between the charge and its completion
(a charge this process's running call still holds is left to that call, which settles it itself);
the data may have been touched, so the settler marks it failed (it stays charged) and writes its audit
entry in the same transaction -- a retry with that request id then gets a final QUERY_EXECUTION_FAILED
instead of REQUEST_IN_PROGRESS. It also writes the missing audit entry of any settled charge that has none
(charges made before the audit log moved into the ledger's database), so the audit log's totals always
equal the ledger's (`gateway.release.accounting.reconcile`).

The settler runs once at start-up, before anything is served, then every `interval_s`; a storage error is
logged and retried at the next round (storage that recovers is settled then).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from gateway.budgets.ledger import GrantKey, Ledger, StaleCharge
from gateway.budgets.stores import TxWrite
from gateway.errors import GatewayError, RequestFailedError, StorageUnavailableError
from gateway.release.oversight import Oversight
from gateway.storage.diskspace import DiskGuard

__all__ = ["RECOVERY_SERVICE", "Settler"]

log = logging.getLogger("gateway.path.settle")

RECOVERY_SERVICE = "Recovery"  # the audit entries the settler writes: privacy_gateway.v1.Recovery/<what>


class Settler:
    """Settles the reservations of dead holders and audits unaudited charges (see the module docstring)."""

    def __init__(self, ledger: Ledger, oversight: Oversight | None, *, interval_s: float = 1.0,
                 lease_s: float = 10.0, clock: Callable[[], float] = time.time, disk: DiskGuard | None = None,
                 unsettled: deque[tuple[GrantKey, str, list[TxWrite]]] | None = None,
                 in_flight: set[tuple[str, str]] | None = None) -> None:
        """Settle `ledger`'s charges, auditing them in `oversight`'s log; keep `disk`'s reserve; retry the
        settlements in `unsettled` (this process's charges whose settlement failed for want of storage); leave
        the charges in `in_flight` ((consumer, request id) of this process's running calls) to their calls."""
        self.in_flight: set[tuple[str, str]] = in_flight if in_flight is not None else set()
        self.disk = disk
        self.unsettled: deque[tuple[GrantKey, str, list[TxWrite]]] = unsettled if unsettled is not None else deque()
        self.ledger = ledger
        self.oversight = oversight
        self.interval_s = interval_s
        self.lease_s = lease_s
        self.clock = clock
        self.settled = 0
        self.audited = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> None:
        """Renew the lease, settle stale reservations, audit unaudited charges (never raises)."""
        if self.disk is not None:
            self.disk.maintain()
        try:
            self.ledger.heartbeat(self.clock())
            while self.unsettled:
                key, request_id, also = self.unsettled[0]
                try:
                    self.ledger.fail(key, request_id, also=also)
                    self.settled += 1
                except StorageUnavailableError:
                    raise
                except GatewayError:  # settled meanwhile
                    pass
                self.unsettled.popleft()
            for charge in self.ledger.stale_reservations(self.clock(), self.lease_s):
                if (charge.key.consumer, charge.request_id) not in self.in_flight:
                    self._settle(charge)
            for charge in self.ledger.unaudited_charges():
                self._audit(charge)
        except GatewayError as exc:
            log.warning("settling charges failed (%s); retrying in %.0f s", exc.message, self.interval_s)
        except Exception:
            log.exception("settling charges failed; retrying in %.0f s", self.interval_s)

    def _entry(self, charge: StaleCharge, what: str, code: str, reason: str) -> dict[str, object]:
        return dict(service=RECOVERY_SERVICE, method=what, code=code, reason=reason,
                    request_id=charge.request_id, consumer=charge.key.consumer, dataset=charge.key.dataset,
                    purpose=charge.key.purpose, normalized_query=f"{charge.product.upper()} (settled)",
                    epsilon=charge.cost.epsilon, delta=charge.cost.delta, rho=charge.cost.rho, charge="charged")

    def _settle(self, charge: StaleCharge) -> None:
        error = RequestFailedError("settled: the gateway that made the charge stopped before it completed")
        also = [] if self.oversight is None else [self.oversight.joined_rpc(
            **self._entry(charge, "SettleCharge", error.code.name, error.reason))]
        try:
            self.ledger.fail(charge.key, charge.request_id, also=also)
        except GatewayError:  # completed or settled meanwhile by another process
            return
        self.settled += 1
        log.warning("settled request %s of %s as failed (its gateway stopped); it stays charged",
                    charge.request_id, charge.key.consumer)

    def _audit(self, charge: StaleCharge) -> None:
        if self.oversight is None:
            return
        code = "OK" if charge.status == "released" else "ABORTED"
        reason = "" if charge.status == "released" else "QUERY_EXECUTION_FAILED"
        if self.ledger.audit_unaudited(charge, self.oversight.joined_rpc(**self._entry(charge, "AuditCharge", code,
                                                                                        reason))):
            self.audited += 1
            log.warning("audited request %s of %s, which had no audit entry", charge.request_id,
                        charge.key.consumer)

    def start(self) -> None:
        """Run now (before serving), then every `interval_s` on a daemon thread until `stop`."""
        self.run_once()

        def loop() -> None:
            while not self._stop.wait(self.interval_s):
                self.run_once()

        self._thread = threading.Thread(target=loop, name="charge-settler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and drop this process's lease."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        try:
            self.ledger.release_lease()
        except GatewayError:
            log.warning("the lease could not be dropped; it expires in %.0f s", self.lease_s)
