"""Benchmark-only stand-ins: a gateway that answers WITHOUT charging or auditing, to price those two steps.

Nothing in `gateway/` imports this module and no setting or policy reaches it: `bare_gateway` builds a
second gateway in the benchmark process (its own gRPC port and state directory, the SAME sandbox process)
and swaps its ledger, nested budgets, release cache, outcome records and audit log for in-memory no-ops.
Everything else is the product's code path: mTLS gRPC, authentication, SQL analysis, OpenDP pricing, the
sandbox round trip, response building and the signed receipt. The difference between the real gateway
and this one, measured interleaved on the same query, is the cost of charging and auditing per request.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from gateway.budgets.governor import Governor
from gateway.budgets.ledger import GrantKey, PriorRelease, PrivacyLoss, Reservation
from gateway.release.oversight import Oversight
from gateway.rpc.server import Gateway, start_gateway
from gateway.settings import Settings
from gateway.storage.state import Outcome


class NoChargeLedger:
    """Accepts every reservation without writing anything (never enforces a budget: benchmark only)."""

    path = Path("/nonexistent/no-charge-ledger")

    def reserve(self, key: GrantKey, *, request_id: str, fingerprint: str, cost: PrivacyLoss,
                budget: PrivacyLoss, durable: bool = True, owner: Any = None) -> Reservation:
        """A reservation that is not stored."""
        return Reservation(request_id=request_id, key=key, cost=cost, spent_after=PrivacyLoss(0.0, 0.0))

    def complete(self, key: GrantKey, request_id: str, response: bytes, *, also: Any = ()) -> None:
        """Nothing stored (a retry would not be replayed)."""

    def fail(self, key: GrantKey, request_id: str, *, also: Any = ()) -> None:
        """Nothing stored."""

    def release_unused(self, key: GrantKey, request_id: str) -> None:
        """Nothing stored."""

    def spent(self, key: GrantKey) -> PrivacyLoss:
        """Always zero."""
        return PrivacyLoss(0.0, 0.0)


class NoChargeGovernor(Governor):
    """The real governor's policy and budget views, but reservations and outcomes are not stored."""

    def __init__(self, real: Governor) -> None:  # shares the real governor's state
        self.__dict__.update(real.__dict__)

    def reserve(self, key: GrantKey, *, request_id: str, fingerprint: str, cost: PrivacyLoss, request_units: int,
                **kwargs: Any) -> Reservation | PriorRelease:
        """A reservation that is not stored."""
        return Reservation(request_id=request_id, key=key, cost=cost, spent_after=PrivacyLoss(0.0, 0.0))

    def outcome(self, **kwargs: Any) -> Outcome | None:
        """No outcome records."""
        return None

    def record_outcome(self, **kwargs: Any) -> None:
        """No outcome records."""


@dataclasses.dataclass
class NoAuditOversight(Oversight):
    """The real signer and metrics, but `record_rpc` appends no audit entry (benchmark only)."""

    def record_rpc(self, **kwargs: Any) -> Any:  # type: ignore[override]
        """Count the request in the metrics; write no audit entry and no log line."""
        self.metrics.observe_request(kwargs["service"], kwargs["method"], "answered", kwargs["code"],
                                     kwargs["duration_s"])


def bare_gateway(settings: Settings, state_dir: Path) -> Gateway:
    """A second gateway on the same sandbox socket whose ledger, budgets, cache and audit are no-ops.

    `settings` are the real gateway's (with `start_sandbox = False`); the stand-in gets its own state
    directory (its real ledger and audit files there stay empty) and a free port.
    """
    bare = start_gateway(dataclasses.replace(settings, state_dir=state_dir, listen="127.0.0.1:0"))
    path = bare.path
    real = path.oversight
    assert real is not None and bare.gate is not None
    path.ledger = NoChargeLedger()  # type: ignore[assignment]
    path.governor = NoChargeGovernor(path.governor)  # no nested budgets, no outcome records, no alert hooks
    path.cache = bare.core.cache = None  # no charge-once release cache
    path.oversight = bare.gate.oversight = NoAuditOversight(real.signer, real.audit, real.metrics,
                                                            real.policy_version)
    return bare
