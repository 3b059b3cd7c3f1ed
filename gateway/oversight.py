"""Wiring for audit, receipts and monitoring: one object the server opens and the RPC path reports to.

``Oversight.open`` loads (or creates) the signing and audit keys, opens ``<state_dir>/audit.sqlite3``,
computes the policy version, and optionally serves ``/metrics`` on loopback. ``record_rpc`` is the one
call the RPC layer makes per request: it counts the request, appends the audit entry and writes one JSON
log line (query digest only). ``close`` seals the audit log (clean shutdown) and stops the metrics server.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path

from gateway.audit import AuditEntry, AuditLog, AuditRecord, Outcome
from gateway.digests import query_digest, release_digest
from gateway.limits import digest_text
from gateway.metrics import Metrics
from gateway.receipts import policy_version
from gateway.signing import Signer, load_or_create_hmac_key

__all__ = ["AUDIT_FILE", "REFUSED_CODES", "Oversight", "outcome_for"]

log = logging.getLogger("gateway.oversight")

AUDIT_FILE = "audit.sqlite3"
# Decided from the request and policy alone, before any data is touched.
REFUSED_CODES = frozenset(
    {"INVALID_ARGUMENT", "UNAUTHENTICATED", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "ALREADY_EXISTS"}
)


def outcome_for(code: str) -> Outcome:
    """``answered`` for OK, ``refused`` for pre-execution refusals, ``failed`` for everything else."""
    if code == "OK":
        return "answered"
    return "refused" if code in REFUSED_CODES else "failed"


@dataclass
class Oversight:
    """The signer, the audit log, the metrics registry and the policy version of one gateway process."""

    signer: Signer
    audit: AuditLog
    metrics: Metrics
    policy_version: str
    metrics_server: ThreadingHTTPServer | None = None
    metrics_port: int | None = None

    @classmethod
    def open(
        cls,
        state_dir: Path,
        policy_file: Path,
        *,
        seal_every: int = 100,
        metrics_port: int | None = None,
        metrics_host: str = "127.0.0.1",
    ) -> Oversight:
        """Opens keys and the audit log under ``state_dir``; serves metrics if ``metrics_port`` is set.

        Args:
            state_dir: The gateway's state directory.
            policy_file: The operator policy file (its hash is the receipts' policy version).
            seal_every: Seal the audit log every this many entries.
            metrics_port: Serve ``/metrics`` on this port (0 picks one); None: do not serve.
            metrics_host: The address to bind (loopback by default).

        Returns:
            The opened governance bundle.
        """
        signer = Signer.load_or_create(state_dir)
        audit = AuditLog(
            Path(state_dir) / AUDIT_FILE, signer, load_or_create_hmac_key(state_dir), seal_every=seal_every
        )
        gov = cls(signer, audit, Metrics(), policy_version(policy_file))
        if metrics_port is not None:
            gov.metrics_server, gov.metrics_port = gov.metrics.serve(metrics_port, metrics_host)
        return gov

    def record_rpc(
        self,
        *,
        service: str,
        method: str,
        code: str,
        duration_s: float,
        request_id: str = "",
        consumer: str = "",
        reason: str = "",
        dataset: str = "",
        purpose: str = "",
        normalized_query: str = "",
        epsilon: float = 0.0,
        delta: float = 0.0,
        released: bytes | None = None,
        identifiers: dict[str, str] | None = None,
        keep_query_text: bool = True,
    ) -> AuditEntry:
        """Counts, audits and logs one RPC (call it once per request, after the outcome is known).

        Args:
            service: Short service name, e.g. ``QueryService``.
            method: RPC method, e.g. ``RunQuery``.
            code: The gRPC status code name (``OK`` when answered).
            duration_s: Handling time.
            request_id: The request id.
            consumer: The certificate identity ("" if unknown).
            reason: The ErrorInfo reason ("" when answered).
            dataset: The dataset named by the request.
            purpose: The purpose named by the request.
            normalized_query: The normalized SQL (pseudonymized before storage; only its digest is logged).
            epsilon: The epsilon charged (0 unless charged).
            delta: The delta charged.
            released: ``receipts.release_bytes(response)`` of a released answer, else None.
            identifiers: Extra identifier fields to audit as keyed hashes.
            keep_query_text: False (a call that was not answered): the entry keeps the query's SHA-256 and
                size (``limits.digest_text``) instead of its text.

        Returns:
            The audit entry.

        Raises:
            AuditError: The entry could not be stored (the caller should not release the answer).
        """
        outcome = outcome_for(code)
        self.metrics.observe_request(service, method, outcome, code, duration_s)
        entry = self.audit.append(
            AuditRecord(
                request_id=request_id, consumer=consumer, rpc=f"privacy_gateway.v1.{service}/{method}",
                outcome=outcome, status_code=code, reason=reason, dataset=dataset, purpose=purpose,
                query=normalized_query if keep_query_text else digest_text(normalized_query),
                epsilon=epsilon, delta=delta,
                released_digest=release_digest(released) if released is not None else "",
                identifiers=identifiers or {},
            )
        )
        log.info(
            "rpc %s/%s %s", service, method, outcome,
            extra={
                "request_id": request_id, "consumer": consumer, "rpc": f"{service}/{method}",
                "outcome": outcome, "code": code, "reason": reason,
                "duration_ms": round(duration_s * 1000, 3),
                "query_digest": query_digest(normalized_query) if normalized_query else "",
            },
        )
        return entry

    def close(self) -> None:
        """Seals the audit log (clean shutdown), closes it, and stops the metrics server."""
        try:
            self.audit.seal()
        finally:
            self.audit.close()
            if self.metrics_server is not None:
                self.metrics_server.shutdown()
                self.metrics_server.server_close()
                self.metrics_server = None
