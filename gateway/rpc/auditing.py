"""privacy_gateway.v1.AuditService: the audit log, receipts, a consumer's own history, the transparency report.

Auditors (role `auditor`) page through the audit log and verify it (chain, MACs, seals, and the accounting
check that it records every settled charge of the ledger with its cost); any member verifies a receipt;
consumers list their own entries and fetch the receipts of their own releases; anyone reads the
transparency report. The interceptor checks the roles (`gateway.rpc.methods`).

The transparency report covers only the datasets whose owner set `[datasets.X.transparency] publish = true`
in the catalog. It gives, per dataset and calendar month (UTC), the requests answered and refused and the
privacy loss charged in all, and per purpose the requests answered and the loss: metadata about use, never
per consumer, and never anything computed from the data. The organisations granted a dataset are listed
only when the operator publishes them (`publish_organizations`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from privacy_gateway.v1 import audit_service_pb2 as au_pb
from privacy_gateway.v1 import model_service_pb2 as m_pb
from privacy_gateway.v1 import query_service_pb2 as q_pb

from gateway.budgets.governor import Governor
from gateway.errors import AuditLogInvalidError, InvalidArgumentError, NotFoundError
from gateway.path.calls import Call
from gateway.policy.periods import RHO_UNITS, from_units, rfc3339
from gateway.release.accounting import reconcile
from gateway.release.audit import AuditEntry, AuditIntegrityError
from gateway.release.oversight import Oversight
from gateway.release.receipts import Receipt, verify_receipt
from gateway.release.signing import public_key_id
from gateway.rpc.interceptor import Body
from gateway.sizes import MAX_EXPORT_BYTES
from sandbox.protocol.messages import CatalogInfo

__all__ = ["AuditServicer"]

DEFAULT_PAGE = 50
DEFAULT_EXPORT_ENTRIES = 1000
MAX_LISTED = 20  # of each kind of accounting difference
MAX_PROBLEMS = 100
# The stored answer's message type, by the RPC that released it (for GetMyReceipt).
_RESPONSES: dict[str, Callable[[bytes], Any]] = {
    "RunQuery": q_pb.RunQueryResponse.FromString,
    "TrainModel": m_pb.TrainModelResponse.FromString,
    "EvaluateModel": m_pb.EvaluateModelResponse.FromString,
}


def entry_pb(e: AuditEntry) -> au_pb.AuditEntry:
    """One stored audit entry as its message."""
    return au_pb.AuditEntry(
        seq=e.seq, time=e.time, request_id=e.request_id, consumer=e.consumer, rpc=e.rpc, dataset=e.dataset,
        purpose=e.purpose, query=e.query, outcome=e.outcome, status_code=e.status_code, reason=e.reason,
        epsilon=e.epsilon, delta=e.delta, rho=e.rho, charge=e.charge, released_digest=e.released_digest,
        hash=e.hash)


class AuditServicer:
    """privacy_gateway.v1.AuditService."""

    SERVICE = "AuditService"
    METHODS = ("ListAuditEntries", "VerifyAuditLog", "ExportAuditLog", "VerifyReceipt", "ListMyRequests",
               "GetMyReceipt", "GetTransparencyReport")

    def __init__(self, oversight: Oversight, governor: Governor, catalog: Callable[[], CatalogInfo], *,
                 publish_organizations: bool = False) -> None:
        """Read `oversight`'s audit log and key, `governor`'s ledger and policy, and the public `catalog`."""
        self.oversight = oversight
        self.governor = governor
        self.catalog = catalog
        self.publish_organizations = publish_organizations

    def bodies(self) -> dict[str, Body]:
        """The method bodies."""
        return {name: Body(getattr(self, name)) for name in self.METHODS}

    # -- auditors ----------------------------------------------------------------------------------

    def ListAuditEntries(self, request: au_pb.ListAuditEntriesRequest, call: Call) -> au_pb.ListAuditEntriesResponse:
        """A page of the audit log, newest first."""
        audit = self.oversight.audit
        size = request.page_size or DEFAULT_PAGE
        rows = audit.page(request.before_seq, size + 1, request.consumer or None)
        more = len(rows) > size
        rows = rows[:size]
        return au_pb.ListAuditEntriesResponse(
            entries=[entry_pb(e) for e in rows], next_before_seq=rows[-1].seq if more and rows else 0,
            last_seq=audit.last_seq())

    def VerifyAuditLog(self, request: au_pb.VerifyAuditLogRequest, call: Call) -> au_pb.VerifyAuditLogResponse:
        """The chain, MAC and seal check, then the accounting check against the ledger."""
        audit = self.oversight.audit
        report = audit.verify(require_sealed=request.require_sealed)
        accounts = reconcile(audit.path)
        return au_pb.VerifyAuditLogResponse(
            chain_ok=report.ok, entries=report.entries, seals=report.seals,
            sealed_through=report.sealed_through or 0,
            problems=[au_pb.AuditProblem(seq=p.seq or 0, kind=p.kind, detail=p.detail)
                      for p in report.problems[:MAX_PROBLEMS]],
            accounts_ok=accounts.ok, charges=sum(g.charges for g in accounts.grants),
            grant_months=len(accounts.grants), in_flight=accounts.in_flight,
            unaudited=accounts.unaudited[:MAX_LISTED], unmatched=accounts.unmatched[:MAX_LISTED],
            different=accounts.different[:MAX_LISTED], duplicated=accounts.duplicated[:MAX_LISTED])

    def ExportAuditLog(self, request: au_pb.ExportAuditLogRequest, call: Call) -> au_pb.ExportAuditLogResponse:
        """A signed export of entries from ``from_seq`` on (sealed at its end), at most ``max_entries`` of them and
        no more than fit one message."""
        audit = self.oversight.audit
        last = audit.last_seq()
        first = max(request.from_seq, 1)
        if first > last:
            return au_pb.ExportAuditLogResponse(from_seq=first, to_seq=0, last_seq=last)
        end = min(last, first + (request.max_entries or DEFAULT_EXPORT_ENTRIES) - 1)
        size = 0
        for entry in audit.entries(first, end):  # stop where the page would outgrow one message
            size += len(json.dumps(entry.to_json_obj())) + 400  # the entry, and room for a seal line
            if size > MAX_EXPORT_BYTES and entry.seq > first:
                end = entry.seq - 1
                break
        with tempfile.TemporaryDirectory(prefix="pgw-audit-export-") as tmp:
            try:
                out = audit.export(first, end, Path(tmp) / "export.jsonl")
            except AuditIntegrityError as exc:
                raise AuditLogInvalidError(f"the audit log fails verification: {exc}; VerifyAuditLog names every "
                                           "problem", toSeq=str(end)) from exc
            data = out.read_bytes()
        return au_pb.ExportAuditLogResponse(export=data, from_seq=first, to_seq=end, last_seq=last)

    # -- any member ---------------------------------------------------------------------------------

    def VerifyReceipt(self, request: au_pb.VerifyReceiptRequest, call: Call) -> au_pb.VerifyReceiptResponse:
        """The receipt's Ed25519 signature under the gateway's key, and its key id."""
        try:
            receipt = Receipt.from_client_json(request.receipt_json)
        except ValueError as exc:
            raise InvalidArgumentError(f"not a receipt file: {exc}", reason="MALFORMED_RECEIPT",
                                       field="receipt_json") from exc
        pub = self.oversight.signer.public_pem
        if receipt.key_id != public_key_id(pub):
            return au_pb.VerifyReceiptResponse(valid=False, key_id=receipt.key_id,
                                               problem="signed with another key than the gateway's")
        if not verify_receipt(receipt.payload_json.encode("utf-8"), receipt.signature, pub):
            return au_pb.VerifyReceiptResponse(valid=False, key_id=receipt.key_id,
                                               problem="the signature does not verify: the receipt was altered")
        return au_pb.VerifyReceiptResponse(valid=True, key_id=receipt.key_id, payload_json=receipt.payload_json)

    # -- consumers -----------------------------------------------------------------------------------

    def ListMyRequests(self, request: au_pb.ListMyRequestsRequest, call: Call) -> au_pb.ListMyRequestsResponse:
        """The caller's own audit entries, newest first."""
        size = request.page_size or DEFAULT_PAGE
        rows = self.oversight.audit.page(request.before_seq, size + 1, call.identity)
        more = len(rows) > size
        rows = rows[:size]
        return au_pb.ListMyRequestsResponse(entries=[entry_pb(e) for e in rows],
                                            next_before_seq=rows[-1].seq if more and rows else 0)

    def GetMyReceipt(self, request: au_pb.GetMyReceiptRequest, call: Call) -> au_pb.GetMyReceiptResponse:
        """The receipt stored with one of the caller's released answers."""
        call.audit.request_id = request.request_id
        if not request.request_id:
            raise InvalidArgumentError("request_id is required", field="request_id")
        body = self.governor.ledger.stored_response(call.identity, request.request_id)
        entries = [e for e in self.oversight.audit.find(call.identity, request.request_id)
                   if e.charge == "charged"] if body is not None else []
        parse = _RESPONSES.get(entries[0].rpc.rpartition("/")[2]) if entries else None
        if body is None or parse is None:
            raise NotFoundError("no released answer of yours has this request id", reason="RECEIPT_NOT_FOUND",
                                requestId=request.request_id)
        return au_pb.GetMyReceiptResponse(receipt=parse(body).receipt)

    # -- anyone ------------------------------------------------------------------------------------------

    def GetTransparencyReport(self, request: au_pb.GetTransparencyReportRequest, call: Call
                              ) -> au_pb.GetTransparencyReportResponse:
        """The published datasets' aggregate use per month and purpose."""
        published = [d for d in self.catalog().datasets if d.published]
        gov = self.governor.governance
        rows = self.governor.ledger.use_by_month([d.name for d in published])
        refused = self.governor.state.refusals_by_month([d.name for d in published])
        out = []
        for d in published:
            months: dict[str, au_pb.TransparencyPeriod] = {}
            purposes: dict[str, au_pb.TransparencyPurpose] = {}
            for g in gov.grants:
                if g.dataset == d.name and g.purpose in gov.purposes:
                    p = gov.purposes[g.purpose]
                    purposes.setdefault(p.name, au_pb.TransparencyPurpose(
                        purpose=p.name, description=p.description, use_class=p.use_class))
            for dataset, month, purpose, status, n, eps, delta, rho_units in rows:
                if dataset != d.name:
                    continue
                m = months.setdefault(month, au_pb.TransparencyPeriod(month=month))
                if status == "released":
                    m.answered += n
                else:
                    m.refused += n  # charged, then failed: counted as charged, not answered
                m.epsilon += eps
                m.delta += delta
                m.rho += from_units(rho_units, RHO_UNITS)
                pp = purposes.get(purpose)
                if pp is None:
                    known = gov.purposes.get(purpose)
                    pp = purposes.setdefault(purpose, au_pb.TransparencyPurpose(
                        purpose=purpose, description=known.description if known else "",
                        use_class=known.use_class if known else ""))
                if status == "released":
                    pp.answered += n
                pp.epsilon += eps
            for (dataset, month), n in refused.items():
                if dataset == d.name:
                    months.setdefault(month, au_pb.TransparencyPeriod(month=month)).refused += n
            orgs = sorted({g.organization for g in gov.grants if g.dataset == d.name}) \
                if self.publish_organizations else []
            out.append(au_pb.TransparencyDataset(
                name=d.name, description=d.description, owner=d.owner, tables=[t.name for t in d.tables],
                periods=[months[k] for k in sorted(months)], purposes=[purposes[k] for k in sorted(purposes)],
                organizations=orgs))
        return au_pb.GetTransparencyReportResponse(datasets=out, at=rfc3339(self.governor.clock()))


def report_json(report: au_pb.GetTransparencyReportResponse) -> str:
    """The transparency report as the JSON twin of the public page."""
    from google.protobuf.json_format import MessageToDict

    return json.dumps(MessageToDict(report, preserving_proto_field_name=True,
                                    always_print_fields_with_no_presence=True), indent=2, sort_keys=True)
