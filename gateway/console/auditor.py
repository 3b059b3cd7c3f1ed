"""Auditor pages (role `auditor`): the audit log browser (paged), verification of the chain with the
accounting check against the ledger, and receipt verification by upload.

Figures come from ListAuditEntries, VerifyAuditLog and VerifyReceipt (AuditService), each audited itself.
"""

from __future__ import annotations

import json

from privacy_gateway.v1 import audit_service_pb2 as au_pb
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response

from gateway.console.app import Console
from gateway.errors import InvalidArgumentError

__all__ = ["ROUTES"]

MAX_RECEIPT_BYTES = 65_536


def _int(raw: str | None) -> int:
    try:
        return max(0, int(raw or 0))
    except ValueError:
        return 0


async def log(console: Console, request: Request) -> Response:
    """A page of the audit log, newest first; `?consumer=` filters, `?before=` pages."""
    consumer = request.query_params.get("consumer", "")
    resp = await console.call(request, "AuditService/ListAuditEntries", au_pb.ListAuditEntriesRequest(
        before_seq=_int(request.query_params.get("before")), page_size=50, consumer=consumer))
    return console.page(request, "auditor_log.html", {"title": "Audit log", "entries": list(resp.entries),
                                                      "next": resp.next_before_seq, "last": resp.last_seq,
                                                      "consumer": consumer})


async def verify(console: Console, request: Request) -> Response:
    """GET: the button. POST: verify the chain, MACs and seals, and the audit log against the ledger."""
    result = None
    if request.method == "POST":
        form = await console.form(request)
        if isinstance(form, Response):
            return form
        result = await console.call(request, "AuditService/VerifyAuditLog", au_pb.VerifyAuditLogRequest(
            require_sealed=form.get("require_sealed") == "1"))
    return console.page(request, "auditor_verify.html", {"title": "Verify the audit log", "result": result})


async def receipt(console: Console, request: Request) -> Response:
    """GET: the upload form. POST: verify the uploaded receipt file against the gateway's key."""
    result = payload = None
    if request.method == "POST":
        form = await console.form(request)
        if isinstance(form, Response):
            return form
        upload = form.get("receipt")
        if isinstance(upload, UploadFile):
            data = await upload.read(MAX_RECEIPT_BYTES + 1)
        else:
            data = str(upload or form.get("receipt_text") or "").encode("utf-8")
        if not data or len(data) > MAX_RECEIPT_BYTES:
            raise InvalidArgumentError(f"choose a receipt file of at most {MAX_RECEIPT_BYTES} bytes", field="receipt")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgumentError("the receipt file is not UTF-8 text", field="receipt") from None
        result = await console.call(request, "AuditService/VerifyReceipt",
                                    au_pb.VerifyReceiptRequest(receipt_json=text))
        if result.valid:
            payload = json.dumps(json.loads(result.payload_json), indent=2, sort_keys=True)
    return console.page(request, "auditor_receipt.html", {"title": "Verify a receipt", "result": result,
                                                          "payload": payload})


ROUTES = [
    ("/auditor/log", log, ["GET"]),
    ("/auditor/verify", verify, ["GET", "POST"]),
    ("/auditor/receipt", receipt, ["GET", "POST"]),
]
