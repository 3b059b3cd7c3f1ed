"""What crosses the trust boundary: the closed set of messages, requests in and replies out. Nothing else.

Requests (gateway -> sandbox): `ExecuteRequest` (a `QueryPlan`, `sandbox.protocol.plan`), the model
requests (`sandbox.protocol.models`), verification checks (`sandbox.protocol.verification`), the owner's
reload and cap usage (`sandbox.protocol.owner`), and describe / health / shutdown.

Replies (sandbox -> gateway): noisy releases (`ExecuteResult`, `sandbox.protocol.release`), DP model
parameters and metrics, verification outcomes, the public catalog (`sandbox.protocol.catalog`), cap usage,
health, and `ErrorReply`. No reply type can carry a row or an exact value:
`tests/sandbox/protocol/test_reply_allowlist.py` walks every field reachable from `REPLIES` and checks it
against a reviewed allowlist.

Every message is an `Envelope` (a frozen msgspec Struct tagged by `type`); `Request` and `Reply` are the
closed unions, and the sandbox decodes only requests (`decode_request`), the gateway only replies
(`decode_reply`). Frames: `sandbox.protocol.wire`.

This module also re-exports the plan, catalog and release types, so `sandbox.protocol.messages` names
every type of the boundary.
"""

from __future__ import annotations

from typing import Literal as TypingLiteral
from typing import TypeAlias, cast, get_args

from sandbox.protocol.base import MAX_FRAME_BYTES, PROTOCOL_VERSION, Envelope, ProtocolError
from sandbox.protocol.catalog import CatalogInfo, ColumnInfo, ColumnType, DatasetInfo, Grade, TableInfo
from sandbox.protocol.models import EvaluateRequest, EvaluateResult, TrainRequest, TrainResult
from sandbox.protocol.owner import CapUsageReply, CapUsageRequest, ReloadRequest
from sandbox.protocol.plan import (
    ARITHMETIC_OPS,
    BINARY_OPS,
    BOUNDED_KINDS,
    COMPARISON_OPS,
    JOIN_KINDS,
    LOGICAL_OPS,
    NO_ARGUMENT_KINDS,
    UNARY_OPS,
    UNIT_AGGREGATES,
    VARIANCE_KINDS,
    Aggregate,
    AggregateKind,
    Between,
    Binary,
    Case,
    Cast,
    Column,
    Expr,
    Func,
    GroupKey,
    InList,
    InUnits,
    IsNull,
    Literal,
    OutputColumn,
    PublicJoin,
    QueryPlan,
    Scalar,
    Source,
    TableSource,
    Unary,
    UnitAggregate,
    UnitJoin,
    UnitOutput,
    check_nesting,
    plan_from_json,
    plan_to_json,
)
from sandbox.protocol.release import ExecuteResult, NoisyValue, ReleaseCost, ReleaseRow
from sandbox.protocol.verification import (
    DescribeTemplatesRequest,
    TemplatesInfo,
    VerifyClaimsRequest,
    VerifyClaimsResult,
)
from sandbox.protocol.wire import Decoder, encode_frame

__all__ = [
    "ARITHMETIC_OPS", "BINARY_OPS", "BOUNDED_KINDS", "COMPARISON_OPS", "JOIN_KINDS", "LOGICAL_OPS",
    "MAX_FRAME_BYTES", "NO_ARGUMENT_KINDS", "PROTOCOL_VERSION", "REPLIES", "REQUESTS", "UNARY_OPS",
    "UNIT_AGGREGATES", "VARIANCE_KINDS", "Aggregate", "AggregateKind", "Between", "Binary", "Case", "Cast",
    "CatalogInfo", "Column", "ColumnInfo", "ColumnType", "DatasetInfo", "DescribeRequest", "Envelope",
    "ErrorReply", "ExecuteRequest", "ExecuteResult", "Expr", "Func", "Grade", "GroupKey", "HealthReply",
    "HealthRequest", "InList", "InUnits", "IsNull", "Literal", "Message", "NoisyValue", "OutputColumn",
    "ProtocolError", "PublicJoin", "QueryPlan", "ReleaseCost", "ReleaseRow", "Reply", "Request", "Scalar",
    "ShutdownReply", "ShutdownRequest", "Source", "TableInfo", "TableSource", "Unary", "UnitAggregate",
    "UnitJoin", "UnitOutput", "decode_body", "decode_reply", "decode_request", "encode_frame",
    "plan_from_json", "plan_to_json",
]


class ExecuteRequest(Envelope, frozen=True, tag="execute"):
    """Run `plan`, spending at most `epsilon` and `delta` (the gateway has already charged them).

    zCDP grants (`rho` > 0): the plan is priced in rho with the Gaussian family (`sandbox.pricing.zcdp`) and
    `epsilon` is 0. What the release counts on the data owner's cap the sandbox derives from its own
    pricing and the owner's catalog alone (`sandbox.pricing.cap_rules`).
    """

    request_id: str
    plan: QueryPlan
    epsilon: float
    delta: float = 0.0
    rho: float = 0.0


class ErrorReply(Envelope, frozen=True, tag="error"):
    """A refusal before touching data (`rejected`, with a data-independent message) or a uniform failure."""

    kind: TypingLiteral["rejected", "failed", "bad_request"]
    message: str = ""


class DescribeRequest(Envelope, frozen=True, tag="describe"):
    """Ask for the public catalog."""


class HealthRequest(Envelope, frozen=True, tag="health"):
    """Liveness probe."""


class HealthReply(Envelope, frozen=True, tag="health_reply"):
    """Liveness answer with the sandbox's lock-down state and its tie to the gateway that started it.

    `parent_pid` is that gateway's pid (0: the sandbox was started on its own); `orphaned` is True once
    that gateway is gone (`sandbox.process.lifecycle`).
    """

    serving: bool
    locked_down: bool
    pid: int = 0
    parent_pid: int = 0
    orphaned: bool = False


class ShutdownRequest(Envelope, frozen=True, tag="shutdown"):
    """Ask the sandbox to stop; honoured only when it is orphaned (its gateway is gone,
    `sandbox.process.lifecycle`)."""


class ShutdownReply(Envelope, frozen=True, tag="shutdown_reply"):
    """`accepted`: the sandbox stops now (it closes its socket and removes the file)."""

    accepted: bool


# ---------------------------------------------------------------------------------------------------
# The registry: the closed set of messages each side accepts
# ---------------------------------------------------------------------------------------------------

Request: TypeAlias = (
    ExecuteRequest | TrainRequest | EvaluateRequest | VerifyClaimsRequest | DescribeTemplatesRequest
    | DescribeRequest | ReloadRequest | CapUsageRequest | HealthRequest | ShutdownRequest
)
Reply: TypeAlias = (
    ExecuteResult | TrainResult | EvaluateResult | VerifyClaimsResult | TemplatesInfo | CatalogInfo
    | CapUsageReply | HealthReply | ShutdownReply | ErrorReply
)
Message: TypeAlias = Request | Reply

REQUESTS: tuple[type[Envelope], ...] = get_args(Request)
REPLIES: tuple[type[Envelope], ...] = get_args(Reply)

_REQUEST_DECODER = Decoder(Request)
_REPLY_DECODER = Decoder(Reply)
_ANY_DECODER = Decoder(Message)


def _checked(msg: Message) -> Message:
    if isinstance(msg, ExecuteRequest):
        check_nesting(msg.plan)
    return msg


def decode_request(body: bytes) -> Request:
    """Decode a frame body the sandbox received: one of `REQUESTS`, strictly (`sandbox.protocol.wire`).

    Raises:
        ProtocolError: malformed, or not a request (a reply type, an unknown type).
    """
    return cast(Request, _checked(_REQUEST_DECODER.decode(body)))


def decode_reply(body: bytes) -> Reply:
    """Decode a frame body the gateway received: one of `REPLIES`, strictly.

    Raises:
        ProtocolError: malformed, or not a reply.
    """
    return cast(Reply, _REPLY_DECODER.decode(body))


def decode_body(body: bytes) -> Message:
    """Decode a frame body holding any message of the boundary, strictly.

    Raises:
        ProtocolError: malformed, or an unknown message type.
    """
    return _checked(_ANY_DECODER.decode(body))
