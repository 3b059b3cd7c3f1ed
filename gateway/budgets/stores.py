"""The storage contracts the gateway's callers program against: ledger, release store, governance state.

The query path, the governor, the admin service and the alert engine only ever use these Protocols;
`start_gateway` (gateway/rpc/server.py) is the one place that picks the implementations. The built-in ones are
SQLite (`gateway.budgets.ledger.Ledger`, `gateway.products.query.cache.ReleaseCache`,
`gateway.storage.state.StateStore`) sharing one
database file in WAL mode, which several gateway processes can share. A PostgreSQL backend is three more
classes satisfying these Protocols (reservations as `SELECT ... FOR UPDATE` or SERIALIZABLE transactions
over the same integer units), wired in at that one place; no caller changes.

Writes that must commit atomically with a ledger completion (the release cache entry and the request's
outcome) are offered to the ledger as `TxWrite`s: a store returns one from `joined_*` when it lives in
the same database as the ledger (then it runs on the ledger's transaction connection, whatever its type),
and None otherwise (then the caller writes it separately after the completion).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from gateway.budgets.ledger import BudgetLimit, CapCounts, GrantKey, Metering, PriorRelease, PrivacyLoss, Reservation
from gateway.errors import GatewayError
from gateway.policy.model import GrantOverride
from gateway.storage.state import Outcome, StoredAlert
from sandbox.pricing.cap_rules import CapSums

__all__ = ["GovernanceStore", "LedgerStore", "ReleaseStore", "TxWrite"]

TxWrite = Callable[[Any], None]
"""A write to run inside the ledger's transaction, given that transaction's connection."""


class LedgerStore(Protocol):
    """The privacy ledger: atomic, durable charges with idempotent request ids."""

    def spent(self, key: GrantKey) -> PrivacyLoss: ...

    def reserve(
        self, key: GrantKey, *, request_id: str, fingerprint: str, cost: PrivacyLoss, budget: PrivacyLoss,
        durable: bool = True, owner: CapCounts | None = None,
    ) -> Reservation | PriorRelease: ...

    def reserve_nested(
        self, key: GrantKey, *, request_id: str, fingerprint: str, cost: PrivacyLoss,
        limits: Sequence[BudgetLimit], metering: Metering, now: float, durable: bool = True,
        owner: CapCounts | None = None, refuse: GatewayError | None = None, product: str = "query",
    ) -> Reservation | PriorRelease: ...

    def complete(self, key: GrantKey, request_id: str, response: bytes, *, also: Sequence[TxWrite] = ()) -> None: ...

    def fail(self, key: GrantKey, request_id: str, *, also: Sequence[TxWrite] = ()) -> None: ...

    def release_unused(self, key: GrantKey, request_id: str) -> None: ...

    def window_spent(self, limit: BudgetLimit, key: GrantKey, organization: str) -> tuple[int, int, int]: ...

    def oldest_in_window(self, limit: BudgetLimit, key: GrantKey, organization: str) -> float | None: ...

    def charges_between(self, start: float | None, end: float | None) -> list[dict[str, object]]: ...

    def organization_units(self, organization: str, start: float | None, end: float | None) -> int: ...

    def owner_sums(self, dataset: str, start: float | None, end: float | None) -> CapSums: ...

    def use_by_month(self, datasets: Sequence[str]) -> list[tuple[str, str, str, str, int, float, float, int]]: ...

    def stored_response(self, consumer: str, request_id: str) -> bytes | None: ...

    def close(self) -> None: ...


class ReleaseStore(Protocol):
    """The charge-once cache: released answers by normalized query."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, consumer: str, response: bytes) -> None: ...

    def joined_put(self, ledger: LedgerStore, key: str, consumer: str, response: bytes) -> TxWrite | None:
        """`put` as a write in `ledger`'s completion transaction, or None if it cannot join it."""
        ...

    def close(self) -> None: ...


class GovernanceStore(Protocol):
    """Operator overrides, revocations, request outcomes and alerts."""

    def overrides(self) -> dict[tuple[str, str, str], GrantOverride]: ...

    def set_override(self, key: tuple[str, str, str], override: GrantOverride, by: str) -> None: ...

    def clear_override(self, key: tuple[str, str, str]) -> bool: ...

    def revoke(self, kind: str, subject: str, by: str, reason: str = "") -> None: ...

    def reinstate(self, kind: str, subject: str) -> bool: ...

    def revoked(self, identity: str, organization: str) -> str | None: ...

    def revocations(self) -> list[tuple[str, str]]: ...

    def generation(self, name: str) -> int:
        """The shared counter `name` (a policy reload bumps "policy"; every replica polls it)."""
        ...

    def bump_generation(self, name: str) -> int: ...

    def record_outcome(self, o: Outcome) -> None: ...

    def joined_outcome(self, ledger: LedgerStore, o: Outcome) -> TxWrite | None:
        """`record_outcome` as a write in `ledger`'s completion transaction, or None if it cannot join it."""
        ...

    def outcomes(
        self, datasets: tuple[str, ...] | None, start: float | None = None, end: float | None = None
    ) -> list[Outcome]: ...

    def count_outcomes(self, consumer: str, since: float, *, outcome: str | None = None,
                       sql_hash: str | None = None) -> int: ...

    def record_alert(self, rule: str, subject: str, detail: str, now: float) -> None: ...

    def last_alert(self, rule: str, subject: str) -> float | None: ...

    def alerts(self, since: float | None = None) -> list[tuple[float, str, str, str]]: ...

    def alert_rows(self, *, include_acknowledged: bool, limit: int) -> list[StoredAlert]: ...

    def unacknowledged_alerts(self) -> int: ...

    def acknowledge_alert(self, alert_id: int, by: str, note: str, now: float) -> StoredAlert | None: ...

    def refusals_by_month(self, datasets: list[str]) -> dict[tuple[str, str], int]: ...

    def close(self) -> None: ...
