"""`PolicyGate`: the interceptor's view of the governance runtime (who is a member, the live policy, audit)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from gateway.budgets.governor import Governor
from gateway.errors import GatewayError, PermissionDeniedError, UnauthenticatedError
from gateway.path.calls import Call, audit_fields
from gateway.release.oversight import Oversight

__all__ = ["PolicyGate"]


class PolicyGate:
    """Identity, roles and revocation against the live policy; one audit entry per call."""

    def __init__(self, governor: Governor, oversight: Oversight | None) -> None:
        """Check calls against `governor`'s live policy; audit them in `oversight`'s log."""
        self.governor = governor
        self.oversight = oversight

    def is_member(self, identity: str) -> bool:
        """True when `identity` is a member of the loaded policy file (no storage access)."""
        gov = self.governor.file_policy.governance
        return gov is not None and gov.member(identity) is not None

    @contextmanager
    def session(self, call: Call) -> Iterator[None]:
        """Pin one policy snapshot for the call on this thread, then check roles and revocations against it.

        Raises:
            UnauthenticatedError: the identity is not a member of the snapshot (removed by a reload).
            PermissionDeniedError: ROLE_REQUIRED, or REVOKED (the member or its organisation).
        """
        with self.governor.snapshot() as policy:
            call.policy = policy
            if not call.rule.any_certificate:
                gov = policy.governance
                member = gov.member(call.identity) if gov is not None else None
                if member is None:
                    raise UnauthenticatedError("the client certificate does not identify a member of the policy")
                roles = call.rule.roles
                if roles and not roles & member.roles:
                    role = " or ".join(sorted(roles))
                    raise PermissionDeniedError(f"this RPC needs role {role!r}", reason="ROLE_REQUIRED", role=role)
                self.governor.check_not_revoked(call.identity)
            yield

    def audit(self, call: Call, error: GatewayError | None) -> None:
        """Append the call's audit entry (see `Oversight.record_rpc`), unless the governed path already wrote it
        in the transaction that settled the call's charge; count and log the call either way. A call that was
        neither answered nor charged keeps its request's text (the SQL, a model's design) only as its SHA-256
        and size (`gateway.release.digests.digest_text`).

        Raises:
            AuditError: it could not be written.
        """
        if self.oversight is None:
            return
        fields = audit_fields(call, "OK" if error is None else error.code.name,
                              "" if error is None else error.reason)
        if call.audit.written:
            self.oversight.observe_rpc(self.oversight.audit_record(**fields), fields["duration_s"])
            return
        self.oversight.record_rpc(**fields)

