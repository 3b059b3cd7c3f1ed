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

__all__ = ["STATUS_DETAILS_KEY", "status_for", "trailing_metadata"]

STATUS_DETAILS_KEY = "grpc-status-details-bin"


def status_for(error: GatewayError) -> status_pb2.Status:
    """The rich status for an error: ErrorInfo always, plus QuotaFailure, BadRequest or RetryInfo where they fit."""
    details: list[Message] = [
        error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata)
    ]
    if isinstance(error, PrivacyBudgetExhaustedError):
        details.append(error_details_pb2.QuotaFailure(violations=[
            error_details_pb2.QuotaFailure.Violation(subject=error.metadata.get("grant", ""),
                                                     description=error.message)]))
    elif error.code == grpc.StatusCode.INVALID_ARGUMENT:
        details.append(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=error.metadata.get("field", "sql"),
                                                        description=error.message)]))
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
    return status_pb2.Status(code=error.code.value[0], message=error.message, details=packed)


def trailing_metadata(status: status_pb2.Status) -> tuple[tuple[str, bytes], ...]:
    """The trailing metadata that carries `status` to the client (what grpc_status.rpc_status reads)."""
    return ((STATUS_DETAILS_KEY, status.SerializeToString()),)
