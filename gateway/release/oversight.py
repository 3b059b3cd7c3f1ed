"""Wiring for audit, receipts and monitoring: one object the server opens and the RPC path reports to.

``Oversight.open`` loads (or creates) the signing and audit keys, opens the audit log -- its tables live in
the ledger's database (``<state_dir>/ledger.sqlite3``), so the entry that records a charge commits in the
same transaction as the charge's completion (``joined_rpc``) -- computes the policy version, and
optionally serves ``/metrics`` on loopback. ``record_rpc`` appends one call's entry on its own (refusals,
reads, replays); either way ``observe_rpc`` counts the call and writes one JSON log line (query digest
only). ``close`` seals the audit log (clean shutdown) and stops the metrics server.

A state directory from before the audit log moved into the ledger's database has ``audit.sqlite3``: its
entries and seals are copied, chain and MACs unchanged, into the ledger's database at the first open, and
the old file is renamed ``audit.sqlite3.migrated``.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from gateway.release.audit import AuditEntry, AuditLog, AuditRecord, Outcome
from gateway.release.digests import digest_text, query_digest, release_digest
from gateway.release.metrics import Metrics
from gateway.release.receipts import policy_version
from gateway.release.signing import Signer, load_or_create_hmac_key
from gateway.storage.pg import PgDatabase

__all__ = ["AUDIT_FILE", "LEGACY_AUDIT_FILE", "REFUSED_CODES", "Oversight", "migrate_legacy_audit", "outcome_for"]

log = logging.getLogger("gateway.release.oversight")

AUDIT_FILE = "ledger.sqlite3"  # the audit tables share the ledger's database
LEGACY_AUDIT_FILE = "audit.sqlite3"
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
        database: Path | PgDatabase | None = None,
    ) -> Oversight:
        """Opens keys and the audit log under ``state_dir``; serves metrics if ``metrics_port`` is set.

        Args:
            state_dir: The gateway's state directory.
            policy_file: The operator policy file (its hash is the receipts' policy version).
            seal_every: Seal the audit log every this many entries.
            metrics_port: Serve ``/metrics`` on this port (0 picks one); None: do not serve.
            metrics_host: The address to bind (loopback by default).
            database: Where the audit tables live (the ledger's database); default ``<state_dir>/ledger.sqlite3``.

        Returns:
            The opened governance bundle.
        """
        signer = Signer.load_or_create(state_dir)
        audit = AuditLog(
            database or Path(state_dir) / AUDIT_FILE, signer, load_or_create_hmac_key(state_dir), seal_every=seal_every
        )
        try:
            migrate_legacy_audit(Path(state_dir), audit)
        except BaseException:
            audit.close()
            raise
        gov = cls(signer, audit, Metrics(), policy_version(policy_file))
        if metrics_port is not None:
            gov.metrics_server, gov.metrics_port = gov.metrics.serve(metrics_port, metrics_host)
        return gov

    def record_rpc(self, **fields: Any) -> AuditEntry:
        """Counts, audits and logs one RPC on its own (call it once per request, after the outcome is known).

        Keyword arguments: those of `audit_record`.

        Returns:
            The audit entry.

        Raises:
            AuditError: The entry could not be stored (the caller should not release the answer).
        """
        record = self.audit_record(**fields)
        entry = self.audit.append(record)
        self.observe_rpc(record, fields["duration_s"])
        return entry

    def joined_rpc(self, **fields: Any) -> Callable[[sqlite3.Connection], None]:
        """A write that appends the call's audit entry inside the caller's transaction on the ledger's database
        (the charge's completion); `observe_rpc` once it has committed."""
        record = self.audit_record(**fields)

        def write(conn: sqlite3.Connection) -> None:
            self.audit.append_in(conn, record)

        return write

    def audit_record(
        self,
        *,
        service: str,
        method: str,
        code: str,
        duration_s: float = 0.0,
        request_id: str = "",
        consumer: str = "",
        reason: str = "",
        dataset: str = "",
        purpose: str = "",
        normalized_query: str = "",
        epsilon: float = 0.0,
        delta: float = 0.0,
        rho: float = 0.0,
        charge: str = "",
        released: bytes | None = None,
        identifiers: dict[str, str] | None = None,
        keep_query_text: bool = True,
    ) -> AuditRecord:
        """The audit record of one RPC.

        Args:
            service: Short service name, e.g. ``QueryService``.
            method: RPC method, e.g. ``RunQuery``.
            code: The gRPC status code name (``OK`` when answered).
            duration_s: Handling time (for the metrics and the log line).
            request_id: The request id.
            consumer: The certificate identity ("" if unknown).
            reason: The ErrorInfo reason ("" when answered).
            dataset: The dataset named by the request.
            purpose: The purpose named by the request.
            normalized_query: The normalized SQL (pseudonymized before storage; only its digest is logged).
            epsilon: The epsilon this call charged (0 unless charged).
            delta: The delta charged.
            rho: The rho charged (zCDP grants).
            charge: ``charged`` (this entry records the request's charge), ``replay`` (a replay of the charged
                release of the same request id), or "".
            released: ``receipts.release_bytes(response)`` of a released answer, else None.
            identifiers: Extra identifier fields to audit as keyed hashes.
            keep_query_text: False (a call that was not answered): the entry keeps the query's SHA-256 and
                size (``digests.digest_text``) instead of its text.
        """
        return AuditRecord(
            request_id=request_id, consumer=consumer, rpc=f"privacy_gateway.v1.{service}/{method}",
            outcome=outcome_for(code), status_code=code, reason=reason, dataset=dataset, purpose=purpose,
            query=normalized_query if keep_query_text else digest_text(normalized_query),
            epsilon=epsilon, delta=delta, rho=rho, charge=charge,
            released_digest=release_digest(released) if released is not None else "",
            identifiers=identifiers or {},
        )

    def observe_rpc(self, record: AuditRecord, duration_s: float) -> None:
        """Count the call in the metrics and write its log line (never raises)."""
        rpc = record.rpc.removeprefix("privacy_gateway.v1.")
        service, _, method = rpc.partition("/")
        self.metrics.observe_request(service, method, record.outcome, record.status_code, duration_s)
        log.info(
            "rpc %s %s", rpc, record.outcome,
            extra={
                "request_id": record.request_id, "consumer": record.consumer, "rpc": rpc,
                "outcome": record.outcome, "code": record.status_code, "reason": record.reason,
                "duration_ms": round(duration_s * 1000, 3),
                "query_digest": query_digest(record.query) if record.query else "",
            },
        )

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


def migrate_legacy_audit(state_dir: Path, audit: AuditLog) -> None:
    """Copy the entries and seals of ``<state_dir>/audit.sqlite3`` (the audit log's file before it moved into
    the ledger's database) into ``audit``'s tables, unchanged, then rename the old file.

    Raises:
        AuditError: both the old file and the ledger's database hold entries (two chains cannot be joined).
    """
    legacy = state_dir / LEGACY_AUDIT_FILE
    if not legacy.exists() or (isinstance(audit.path, Path) and legacy.resolve() == audit.path.resolve()):
        return
    src = sqlite3.connect(legacy, isolation_level=None)
    try:
        present = {row[1] for row in src.execute("PRAGMA table_info(entries)")}
        columns = [c for c in (*_LEGACY_COLUMNS.split(", "), "v", "rho", "charge") if c in present]
        entries = src.execute(f"SELECT {', '.join(columns)} FROM entries ORDER BY seq").fetchall()
        seals = src.execute("SELECT seq, head_hash, time, key_id, signature FROM seals ORDER BY seq").fetchall()
    finally:
        src.close()
    audit.import_rows(columns, entries, seals)
    legacy.rename(legacy.with_name(LEGACY_AUDIT_FILE + ".migrated"))
    log.warning("audit log moved from %s into %s (%d entries, %d seals)", legacy, audit.path, len(entries),
                len(seals))


_LEGACY_COLUMNS = ("seq, time, request_id, consumer, rpc, dataset, purpose, query, outcome, status_code, reason,"
                   " epsilon, delta, released_digest, identifiers, prev_hash, hash, mac")
