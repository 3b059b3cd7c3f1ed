"""The gateway's one error hierarchy, each class mapped to a gRPC status code and an ErrorInfo reason.

GatewayError                         code                 ErrorInfo.reason
├── InvalidArgumentError             INVALID_ARGUMENT     INVALID_PRIVACY_LOSS, INVALID_REQUEST, ...
│   └── InvalidQueryError            INVALID_ARGUMENT     SQL_PARSE_FAILED, QUERY_NOT_SUPPORTED, ...
├── UnauthenticatedError             UNAUTHENTICATED      UNKNOWN_IDENTITY
├── PermissionDeniedError            PERMISSION_DENIED    DATASET_ACCESS_DENIED, PURPOSE_NOT_GRANTED
├── PrivacyBudgetExhaustedError      RESOURCE_EXHAUSTED   PRIVACY_BUDGET_EXHAUSTED
├── OwnerCapIncompatibleError        FAILED_PRECONDITION  OWNER_CAP_INCOMPATIBLE
├── AuditLogInvalidError             FAILED_PRECONDITION  AUDIT_LOG_INVALID (an export of a log that fails checks)
├── RequestIdConflictError           ALREADY_EXISTS       REQUEST_ID_REUSED
├── RequestInProgressError           ABORTED              REQUEST_IN_PROGRESS (+ RetryInfo)
├── RequestFailedError               ABORTED              QUERY_EXECUTION_FAILED (final: charged, failed)
├── StorageUnavailableError          UNAVAILABLE          STORAGE_UNAVAILABLE (+ RetryInfo)
├── QueryExecutionError              ABORTED              QUERY_EXECUTION_FAILED (uniform; engine text never sent)
├── SandboxUnavailableError          UNAVAILABLE          SANDBOX_UNAVAILABLE (+ RetryInfo)
├── StateUnavailableError            UNAVAILABLE          STATE_UNAVAILABLE (+ RetryInfo)
├── OverloadedError                  RESOURCE_EXHAUSTED   TOO_MANY_CONCURRENT_CALLS, SERVER_BUSY (+ RetryInfo)
├── DeadlineExceededError            DEADLINE_EXCEEDED    DEADLINE_EXCEEDED (refused before any charge)
├── MethodNotAllowedError            UNIMPLEMENTED        METHOD_NOT_SERVED
└── GatewayInternalError             INTERNAL             INTERNAL_ERROR ("probably a bug", with an incident id)

ConfigError (not a gRPC error, defined in sandbox.errors): a policy or catalog file is invalid; its message
names the file, the key and the problem.

Rules: a message never contains data values, only facts about the request and the policy. Anything dynamic
in a message is also in `metadata` (lowerCamelCase keys), so clients never parse text.
"""

from __future__ import annotations

import uuid
from typing import ClassVar

import grpc

from sandbox.errors import ConfigError

__all__ = [
    "ERROR_DOMAIN",
    "AuditLogInvalidError",
    "ConfigError",
    "DeadlineExceededError",
    "GatewayError",
    "GatewayInternalError",
    "InvalidArgumentError",
    "InvalidQueryError",
    "MethodNotAllowedError",
    "NotFoundError",
    "OverloadedError",
    "OwnerCapIncompatibleError",
    "PermissionDeniedError",
    "PrivacyBudgetExhaustedError",
    "QueryExecutionError",
    "RequestFailedError",
    "RequestIdConflictError",
    "RequestInProgressError",
    "SandboxUnavailableError",
    "StateUnavailableError",
    "StorageUnavailableError",
    "UnauthenticatedError",
]

ERROR_DOMAIN = "privacy-gateway.example.org"


class GatewayError(Exception):
    """Base class: an error that is rendered to the client as a gRPC status with ErrorInfo."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.INTERNAL
    default_reason: ClassVar[str] = "INTERNAL_ERROR"
    # Seconds after which a retry may succeed (sent as google.rpc.RetryInfo); None: do not retry as is.
    retry_after_s: float | None = None

    def __init__(self, message: str, *, reason: str | None = None, **metadata: str) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata: dict[str, str] = {k: str(v) for k, v in metadata.items()}


class InvalidArgumentError(GatewayError):
    """A request field is malformed (epsilon NaN or negative, empty dataset name, ...)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_REQUEST"


class InvalidQueryError(InvalidArgumentError):
    """The SQL is not allowed; the message names the construct and depends only on the query text."""

    default_reason = "QUERY_NOT_SUPPORTED"


class NotFoundError(GatewayError):
    """Something of the caller's own that the request names does not exist (a receipt of theirs)."""

    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class UnauthenticatedError(GatewayError):
    """The caller's certificate identity is not a known consumer."""

    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNKNOWN_IDENTITY"


class PermissionDeniedError(GatewayError):
    """No grant for this dataset or purpose (unknown datasets look exactly the same, AIP-193)."""

    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "DATASET_ACCESS_DENIED"


class PrivacyBudgetExhaustedError(GatewayError):
    """The release would exceed the remaining privacy budget; nothing was charged."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "PRIVACY_BUDGET_EXHAUSTED"


class OwnerCapIncompatibleError(GatewayError):
    """The data owner's cap is stated in a privacy definition that cannot count this kind of release (a zCDP
    release on an (epsilon, delta) cap without the owner's conversion_delta, an approximate-DP release on a
    rho cap); nothing was charged. Only the data owner's catalog or the grant's definition can change that."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "OWNER_CAP_INCOMPATIBLE"


class AuditLogInvalidError(GatewayError):
    """The audit log fails verification within the range asked for: nothing is exported (VerifyAuditLog names
    the problems)."""

    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "AUDIT_LOG_INVALID"


class RequestIdConflictError(GatewayError):
    """A request_id was reused for a different request."""

    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "REQUEST_ID_REUSED"


class RequestInProgressError(GatewayError):
    """A request with this request_id is still running: retry with the same id shortly (RetryInfo). A charge
    whose gateway died is settled (failed) within seconds, after which the retry gets a final status."""

    code = grpc.StatusCode.ABORTED
    default_reason = "REQUEST_IN_PROGRESS"
    retry_after_s = 1.0


class RequestFailedError(GatewayError):
    """The request with this request_id failed after it was charged: final; its cost stays charged."""

    code = grpc.StatusCode.ABORTED
    default_reason = "QUERY_EXECUTION_FAILED"


class StorageUnavailableError(GatewayError):
    """The gateway's state could not be read or written (disk full, locked past the busy timeout, I/O error).
    Nothing was released; a charge already made is settled once storage recovers. Retry with the same
    request id (RetryInfo)."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "STORAGE_UNAVAILABLE"
    retry_after_s = 2.0


class QueryExecutionError(GatewayError):
    """Uniform failure after the data was touched (timeout, memory, engine error). Charged like an answer."""

    code = grpc.StatusCode.ABORTED
    default_reason = "QUERY_EXECUTION_FAILED"

    def __init__(self, *, charged: float = 0.0) -> None:
        super().__init__(
            "the query could not be completed inside the sandbox's limits; "
            "its privacy cost stays charged"
        )
        self.charged_epsilon = charged  # for the audit log; not sent (it is in the request)


class SandboxUnavailableError(GatewayError):
    """The sandbox process is not reachable; nothing was charged. A retry after a few seconds may succeed."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "SANDBOX_UNAVAILABLE"
    retry_after_s = 2.0


class StateUnavailableError(GatewayError):
    """A state database could not be written in time (busy past its timeout, disk full, I/O error); the
    message says what stays charged. A retry after a moment may succeed."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "STATE_UNAVAILABLE"
    retry_after_s = 1.0


class OverloadedError(GatewayError):
    """The caller has too many calls in flight, or the server's queue is full; nothing was done."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "SERVER_BUSY"

    def __init__(self, message: str, *, reason: str | None = None, retry_after_s: float = 0.5,
                 **metadata: str) -> None:
        super().__init__(message, reason=reason, **metadata)
        self.retry_after_s = retry_after_s


class DeadlineExceededError(GatewayError):
    """The client's deadline passed before the call could be charged; nothing was charged."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class MethodNotAllowedError(GatewayError):
    """The method has no access rule on this server (a method is served only with one)."""

    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "METHOD_NOT_SERVED"


class GatewayInternalError(GatewayError):
    """Our bug. The client gets an incident id; the details stay in the server log."""

    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL_ERROR"

    def __init__(self, message: str = "internal error (probably a bug)") -> None:
        incident = uuid.uuid4().hex[:12]
        super().__init__(f"{message}; incident {incident}", incidentId=incident)
