"""One exception hierarchy for everything the client reports: a refused or failed call, and a local problem
(a certificate file, a receipt file) found before anything is sent.

GatewayError                         what the gateway answered (status code, ErrorInfo reason and metadata)
├── InvalidRequest                   INVALID_ARGUMENT: a field of the request is wrong
│   └── InvalidQuery                 INVALID_ARGUMENT with an SQL reason: ``.position``, ``.suggestion``
├── Unauthenticated                  UNAUTHENTICATED: the certificate names nobody in the policy
├── PermissionDenied                 PERMISSION_DENIED: no grant for this dataset, purpose or method
├── NotFound                         NOT_FOUND
├── BudgetExhausted                  RESOURCE_EXHAUSTED with reason PRIVACY_BUDGET_EXHAUSTED
├── Busy                             RESOURCE_EXHAUSTED otherwise (admission); retried with RetryInfo
├── Unavailable                      UNAVAILABLE: the gateway or its sandbox or storage; retried
├── Conflict                         ALREADY_EXISTS / ABORTED / FAILED_PRECONDITION: a request id reused with
│                                    another request, a request still running, a charged request that failed
├── DeadlineExceeded                 DEADLINE_EXCEEDED (refused before any charge)
└── InternalError                    INTERNAL or anything unexpected: a bug; ``.metadata`` has the incident id
ClientSetupError                     a local file or setting is wrong (missing or expired certificate, ...)
ReceiptError                         a receipt file cannot be read
"""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

__all__ = [
    "Busy",
    "ClientError",
    "ClientSetupError",
    "Conflict",
    "DeadlineExceeded",
    "GatewayError",
    "InternalError",
    "InvalidQuery",
    "InvalidRequest",
    "NotFound",
    "PermissionDenied",
    "ReceiptError",
    "Status",
    "Unauthenticated",
    "Unavailable",
    "from_rpc_error",
]


class ClientError(Exception):
    """The base of every exception this package raises."""


class ClientSetupError(ClientError):
    """A local file or setting is wrong; the message names it and says what to do."""


class ReceiptError(ClientError):
    """A receipt file is not a receipt the gateway writes; the message names the file and the problem."""


@dataclass(frozen=True, slots=True)
class Status:
    """What a failed call carried: the gRPC status, the ErrorInfo reason and metadata, RetryInfo."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    retry_after_s: float | None = None
    field_violations: tuple[tuple[str, str], ...] = ()


class GatewayError(ClientError):
    """The gateway refused or failed a call. ``str(error)`` is one line: ``CODE (REASON): message``."""

    def __init__(self, status: Status) -> None:
        self.status = status
        reason = f" ({status.reason})" if status.reason else ""
        super().__init__(f"{status.code.name}{reason}: {status.message}")

    @property
    def code(self) -> grpc.StatusCode:
        """The gRPC status code."""
        return self.status.code

    @property
    def reason(self) -> str:
        """The ErrorInfo reason (e.g. ``PRIVACY_BUDGET_EXHAUSTED``), empty when the gateway sent none."""
        return self.status.reason

    @property
    def metadata(self) -> dict[str, str]:
        """The ErrorInfo metadata: every dynamic fact of the message, by lowerCamelCase key."""
        return self.status.metadata

    @property
    def retry_after_s(self) -> float | None:
        """RetryInfo's delay in seconds, when the gateway says a retry may succeed."""
        return self.status.retry_after_s


class InvalidRequest(GatewayError):
    """INVALID_ARGUMENT: the request is wrong (a privacy loss out of range, an unknown field value, ...)."""


class InvalidQuery(InvalidRequest):
    """The SQL is refused; ``position`` and ``suggestion`` are set when the gateway sends them."""

    @property
    def position(self) -> str | None:
        """Where in the SQL the problem is (the gateway's ``position``, ``line`` or ``column`` metadata)."""
        for key in ("position", "line", "column"):
            if key in self.metadata:
                return self.metadata[key]
        return None

    @property
    def suggestion(self) -> str | None:
        """What the gateway suggests instead (e.g. a ``CLAMP``), when it says."""
        for key in ("suggestion", "hint", "fix"):
            if key in self.metadata:
                return self.metadata[key]
        return None


class Unauthenticated(GatewayError):
    """UNAUTHENTICATED: the certificate's name is not a member of any organisation in the policy."""


class PermissionDenied(GatewayError):
    """PERMISSION_DENIED: no grant for this dataset, purpose, template or method, or a revoked member."""


class NotFound(GatewayError):
    """NOT_FOUND: an unknown dataset, template, model or request id."""


class BudgetExhausted(GatewayError):
    """RESOURCE_EXHAUSTED / PRIVACY_BUDGET_EXHAUSTED: a budget level cannot pay for the request.

    ``metadata`` names the level and grant; the request was not charged."""


class Busy(GatewayError):
    """RESOURCE_EXHAUSTED for load (too many calls): retried automatically while RetryInfo allows."""


class Unavailable(GatewayError):
    """UNAVAILABLE: the gateway, its sandbox or its storage cannot answer now; retried automatically."""


class Conflict(GatewayError):
    """The request id is taken by another request, the request is still running, or it failed for good."""


class DeadlineExceeded(GatewayError):
    """DEADLINE_EXCEEDED: the call's deadline passed."""


class InternalError(GatewayError):
    """INTERNAL or an unexpected status: a bug in the gateway; report it with ``metadata`` (incident id)."""


_BY_CODE: dict[grpc.StatusCode, type[GatewayError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequest,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Busy,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.ALREADY_EXISTS: Conflict,
    grpc.StatusCode.ABORTED: Conflict,
    grpc.StatusCode.FAILED_PRECONDITION: Conflict,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
}

# INVALID_ARGUMENT reasons about a query request's other fields; any other refusal of a query is about its SQL.
_REQUEST_REASONS = frozenset({
    "INVALID_REQUEST", "INVALID_PRIVACY_LOSS", "PRIVACY_LOSS_ABOVE_QUERY_CAP", "DELTA_REQUIRED",
    "INVALID_REQUEST_ID", "INVALID_ACCURACY_TARGET", "ACCURACY_TARGET_UNSUPPORTED", "INVALID_INTERVAL_SHARE",
    "INVALID_WEIGHTS", "FIELD_OUT_OF_RANGE", "FIELD_TOO_LONG", "MALFORMED_MESSAGE", "MISSING_FIELD",
})


def status_of(error: grpc.RpcError) -> Status:
    """Decode a failed call: code, message, ErrorInfo, RetryInfo and BadRequest."""
    code: grpc.StatusCode = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message: str = (error.details() if hasattr(error, "details") else "") or ""
    reason, metadata, retry = "", {}, None
    violations: tuple[tuple[str, str], ...] = ()
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:  # a status whose code or message disagrees with the call's
        status = None
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason, metadata = info.reason, dict(info.metadata)
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                ri = error_details_pb2.RetryInfo()
                detail.Unpack(ri)
                retry = ri.retry_delay.seconds + ri.retry_delay.nanos / 1e9
            elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                br = error_details_pb2.BadRequest()
                detail.Unpack(br)
                violations = tuple((v.field, v.description) for v in br.field_violations)
    return Status(code, message, reason, metadata, retry, violations)


def from_rpc_error(error: grpc.RpcError, *, sql: bool = False) -> GatewayError:
    """The exception of this hierarchy for a failed call (``sql``: the call carried SQL, so a refusal that is
    not about another field is an `InvalidQuery`)."""
    status = status_of(error)
    cls = _BY_CODE.get(status.code, InternalError)
    if status.code == grpc.StatusCode.RESOURCE_EXHAUSTED and status.reason == "PRIVACY_BUDGET_EXHAUSTED":
        cls = BudgetExhausted
    elif (sql and status.code == grpc.StatusCode.INVALID_ARGUMENT and status.reason not in _REQUEST_REASONS
          and status.metadata.get("field", "sql") == "sql"):
        cls = InvalidQuery
    return cls(status)
