"""`Call`: one RPC's identity, policy snapshot, deadline, and the facts its audit entry records.

The interceptor (`gateway.rpc.interceptor`) makes one per RPC and hands it to the method body; the governed path,
the products and the audit read and fill it in. What a call knows of its method's access rule is `CallRule`
(`gateway.rpc.methods.MethodRule` is the one implementation).
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from gateway.errors import DeadlineExceededError
from gateway.policy.model import Policy

__all__ = ["CURRENT_CALL", "AuditFacts", "Call", "CallRule", "audit_fields"]


class CallRule(Protocol):
    """What a call knows of its method's access rule."""

    @property
    def service(self) -> str:
        """The short service name, e.g. `QueryService`."""
        ...

    @property
    def method(self) -> str:
        """The method name, e.g. `RunQuery`."""
        ...

    @property
    def roles(self) -> frozenset[str]:
        """The roles that may call it (empty: any member)."""
        ...

    @property
    def any_certificate(self) -> bool:
        """True when any certificate of the CA may call it (health checks), member or not."""
        ...


@dataclass
class AuditFacts:
    """What the call's audit entry records besides its outcome (filled in as the call proceeds).

    `epsilon`, `delta` and `rho` are what THIS call charged (0 for a refusal, a cached answer or a
    replay); `replay_of_cost` is the original cost of a replayed release.
    """

    request_id: str = ""
    dataset: str = ""
    purpose: str = ""
    query: str = ""  # the normalised SQL or a description of the request (pseudonymised when stored)
    epsilon: float = 0.0
    delta: float = 0.0
    rho: float = 0.0
    released: bytes | None = None  # what `gateway.release.receipts.release_bytes` gives for a released answer
    replayed: bool = False
    cached: bool = False
    charged: bool = False  # this call's charge is recorded in its entry (epsilon, delta, rho)
    written: bool = False  # the entry was written with the charge's settlement (`GovernedPath`): do not append


@dataclass
class Call:
    """One RPC as it walks the governed path.

    `identity` is the verified certificate's common name (set by the interceptor, never from request
    fields or metadata); `policy` is the live policy snapshot the whole call uses; `deadline` is on
    `time.monotonic()`'s clock (None: the client set none).
    """

    rule: CallRule
    started: float = field(default_factory=time.monotonic)
    deadline: float | None = None
    identity: str = ""
    policy: Policy | None = None
    audit: AuditFacts = field(default_factory=AuditFacts)

    @property
    def method(self) -> str:
        """`Service/Method`."""
        return f"{self.rule.service}/{self.rule.method}"

    def check_deadline(self, step: str) -> None:
        """Refuse to go on with `step` once the client's deadline has passed (nothing charged yet).

        Raises:
            DeadlineExceededError: the deadline has passed.
        """
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise DeadlineExceededError(f"the call's deadline passed before {step}; nothing was charged")

    def require_policy(self) -> Policy:
        """The call's policy snapshot (set before any body runs)."""
        assert self.policy is not None, "the governed path sets the policy snapshot first"
        return self.policy


# The call being served on this task/thread (the interceptor sets it; bodies receive it explicitly).
CURRENT_CALL: contextvars.ContextVar[Call | None] = contextvars.ContextVar("pgw_call", default=None)


def audit_fields(call: Call, code: str, reason: str) -> dict[str, Any]:
    """The keyword arguments of `Oversight.audit_record` for `call` with this outcome."""
    facts = call.audit
    return dict(
        service=call.rule.service, method=call.rule.method, code=code, reason=reason,
        duration_s=max(0.0, time.monotonic() - call.started), request_id=facts.request_id,
        consumer=call.identity, dataset=facts.dataset, purpose=facts.purpose, normalized_query=facts.query,
        epsilon=facts.epsilon, delta=facts.delta, rho=facts.rho, released=facts.released,
        charge="charged" if facts.charged else "replay" if facts.replayed else "",
        keep_query_text=code == "OK" or facts.charged,
    )
