"""The one mapping from `gateway.errors` to a gRPC status: code, message, and `google.rpc.Status` details.

Every error carries `ErrorInfo` (reason, domain, metadata). Budget exhaustion adds `QuotaFailure`,
invalid arguments `BadRequest`, and errors a client should retry later (`retry_after_s`) `RetryInfo`.
"""

from __future__ import annotations

import math

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from gateway.errors import ERROR_DOMAIN, GatewayError, PrivacyBudgetExhaustedError

__all__ = ["MAX_MESSAGE_CHARS", "MAX_METADATA_CHARS", "STATUS_DETAILS_KEY", "status_for", "trailing_metadata"]

STATUS_DETAILS_KEY = "grpc-status-details-bin"
# What an error may carry, whatever raised it (request fields are bounded before any body runs; this is the
# last line): gRPC refuses trailing metadata over 8-16 KiB, which would turn any error into RESOURCE_EXHAUSTED.
MAX_MESSAGE_CHARS = 1_024
MAX_METADATA_CHARS = 256
MAX_METADATA_ENTRIES = 16


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def status_for(error: GatewayError) -> status_pb2.Status:
    """The rich status for an error: ErrorInfo always, plus QuotaFailure, BadRequest or RetryInfo where they fit."""
    message = _bounded(error.message, MAX_MESSAGE_CHARS)
    metadata = {_bounded(k, 64): _bounded(v, MAX_METADATA_CHARS)
                for k, v in sorted(error.metadata.items())[:MAX_METADATA_ENTRIES]}
    details: list[Message] = [
        error_details_pb2.ErrorInfo(reason=_bounded(error.reason, 64), domain=ERROR_DOMAIN, metadata=metadata)
    ]
    if isinstance(error, PrivacyBudgetExhaustedError):
        details.append(error_details_pb2.QuotaFailure(violations=[
            error_details_pb2.QuotaFailure.Violation(subject=metadata.get("grant", ""),
                                                     description=message)]))
    elif error.code == grpc.StatusCode.INVALID_ARGUMENT:
        details.append(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=metadata.get("field", "sql"),
                                                        description=message)]))
    if error.retry_after_s is not None:
        seconds = max(0.0, error.retry_after_s)
        whole = math.floor(seconds)
        details.append(error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=whole, nanos=int((seconds - whole) * 1e9))))
    packed = []
    for d in details:
        a = any_pb2.Any()
        a.Pack(d)
        packed.append(a)
    return status_pb2.Status(code=error.code.value[0], message=message, details=packed)


def trailing_metadata(status: status_pb2.Status) -> tuple[tuple[str, bytes], ...]:
    """The trailing metadata that carries `status` to the client (what grpc_status.rpc_status reads)."""
    return ((STATUS_DETAILS_KEY, status.SerializeToString()),)
