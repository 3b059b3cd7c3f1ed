"""Every request field's limit, checked before a method body stores or echoes anything.

`LIMITS` names each field of every request message in `proto/` (`Message.field`) with what it may hold:
text lengths in characters, entry counts of repeated fields and maps (and the length of map keys), and the
range of numbers (finite, within bounds). The interceptor (`gateway.rpc.interceptor`) runs `check_request`
on every request message before the method body sees it, and on every message of a request stream as it
arrives; a test checks that every field of every request message has an entry and that docs/reference.md's limits
table is `markdown_table()`. A violation is INVALID_ARGUMENT naming the field (ErrorInfo metadata `field`,
`limit`, and `size` or `value`), with reason FIELD_TOO_LONG (text and entry counts) or the field's own
range reason (INVALID_PRIVACY_LOSS, INVALID_WEIGHTS, ..., FIELD_OUT_OF_RANGE). Messages echo only the
field name, its size and the limit, never the value of a text field.

Requests that cannot be decoded at all reach the interceptor as `MalformedMessage` (the deserializers
registered with grpc never raise, see `lenient`), and `check_request` refuses them as MALFORMED_MESSAGE.

What the limits do not cover is checked where it is decided: whether a name exists, a template's own
lists and ladders, the grant's per-query caps, the SQL allowlist and the plan limits (the sandbox's own
compiler, `sandbox.plans.compile`, which the gateway's analyzer runs before pricing).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gateway.errors import InvalidArgumentError
from gateway.sizes import (
    CASE_REFERENCE_CHARS,
    MAX_BATCH_BYTES,
    MAX_BATCH_MESSAGES,
    MAX_COEFFICIENT,
    MAX_EPSILON,
    MAX_EXPORT_ENTRIES,
    MAX_HALF_WIDTH,
    MAX_OUTPUT_ENTRIES,
    MAX_PAGE,
    MAX_PARAMETERS,
    MAX_RHO,
    MAX_SEQ,
    NAME_CHARS,
    PARAM_STRING_CHARS,
    REASON_CHARS,
    RECEIPT_CHARS,
    REQUEST_ID_CHARS,
    SQL_CHARS,
    SUBJECT_CHARS,
    TERM_CHARS,
    TIMESTAMP_CHARS,
    WEIGHT_RANGE,
)
from sandbox.pricing import models as mp
from sandbox.protocol.verification import MAX_BATCH

__all__ = [
    "LIMITS",
    "Limit",
    "MalformedMessage",
    "check_claim_parameters",
    "check_claims",
    "check_request",
    "lenient",
    "markdown_table",
    "request_fields",
]

PACKAGE = "privacy_gateway.v1"

@dataclass(frozen=True, slots=True)
class Limit:
    """What one request field may hold.

    `chars`: the most characters of a string (of each element of a repeated string). `items`: the most
    elements of a repeated field or entries of a map; `key_chars`: the longest map key. `low`/`high`: the
    range of a number (of each element or map value), `high_open` excluding `high`; numbers must always be
    finite. `reason`: the ErrorInfo reason of an out-of-range number. `deep`: elements of a repeated message
    are checked here (False: the body checks them column-wise, `check_claims`). `text`: docs/reference.md's words.
    """

    text: str
    chars: int | None = None
    items: int | None = None
    key_chars: int | None = None
    low: float | None = None
    high: float | None = None
    high_open: bool = False
    reason: str = "FIELD_OUT_OF_RANGE"
    deep: bool = True


def _fmt(x: float) -> str:
    """A bound as docs/reference.md shows it: 1,000 or 1e6 or 1e-6."""
    if x == int(x) and abs(x) < 1e5:
        return f"{int(x):,}"
    return f"{x:g}".replace("e+0", "e").replace("e-0", "e-").replace("e+", "e")


def _span(low: float, high: float, open_: bool) -> str:
    return f"[{_fmt(low)}, {_fmt(high)}{')' if open_ else ']'}"


def _text(chars: int, what: str = "") -> Limit:
    return Limit(f"at most {chars:,} characters{what}", chars=chars)


def _number(low: float, high: float, reason: str = "FIELD_OUT_OF_RANGE", *, open_: bool = False,
            what: str = "", integer: bool = False) -> Limit:
    kind = "an integer" if integer else "finite,"
    return Limit(f"{kind} in {_span(low, high, open_)}{what}", low=low, high=high, high_open=open_,
                 reason=reason)


def _map(items: int, key_chars: int, value: Limit | None = None, what: str = "") -> Limit:
    inner = f"; values {value.text}" if value is not None else ""
    lo, hi = (value.low, value.high) if value is not None else (None, None)
    return Limit(f"at most {items:,} entries, keys at most {key_chars:,} characters{inner}{what}",
                 items=items, key_chars=key_chars, low=lo, high=hi,
                 high_open=value.high_open if value is not None else False,
                 reason=value.reason if value is not None else "FIELD_OUT_OF_RANGE")


_NAME = _text(NAME_CHARS)
_REQUEST_ID = _text(REQUEST_ID_CHARS, "; empty: the gateway assigns one")
_NESTED = Limit("its fields' limits")
_FLAG = Limit("true or false")
_ENUM = Limit("a declared value")
_LOSS = "INVALID_PRIVACY_LOSS"
_MODEL = "INVALID_MODEL_PARAMETER"
_ADJUST = "INVALID_ADJUSTMENT"
_WEIGHT = _number(*WEIGHT_RANGE, "INVALID_WEIGHTS")
_TARGET = _number(0.0, MAX_HALF_WIDTH, "INVALID_ACCURACY_TARGET",
                  what="; the epsilon (rho) it needs must be at least the minimum and within the grant")
_SHARE = _number(0.0, 1.0, "INVALID_INTERVAL_SHARE", open_=True)
_TIMESTAMP = _text(TIMESTAMP_CHARS, " (RFC 3339)")

LIMITS: dict[str, Limit] = {
    # QueryService
    **{f"{m}.{f}": lim for m in ("RunQueryRequest", "ExplainQueryRequest") for f, lim in {
        "dataset": _NAME,
        "sql": _text(SQL_CHARS),
        "privacy_loss": _NESTED,
        "purpose": _NAME,
        "weights": _map(MAX_OUTPUT_ENTRIES, NAME_CHARS, _WEIGHT),
        "accuracy": _NESTED,
        "interval_shares": _map(MAX_OUTPUT_ENTRIES, NAME_CHARS, _SHARE),
    }.items()},
    "RunQueryRequest.request_id": _REQUEST_ID,
    "PrivacyLoss.epsilon": _number(0.0, MAX_EPSILON, _LOSS, what="; at least 1e-6 where used"),
    "PrivacyLoss.delta": _number(0.0, 1.0, _LOSS, open_=True),
    "PrivacyLoss.rho": _number(0.0, MAX_RHO, _LOSS, what="; at least 1e-12 where used"),
    "AccuracyTarget.half_width_95": _TARGET,
    "AccuracyTarget.per_output": _map(MAX_OUTPUT_ENTRIES, NAME_CHARS, _TARGET),
    # CatalogService, BudgetService
    "GetDatasetRequest.name": _NAME,
    "GetPrivacyBudgetRequest.dataset": _NAME,
    # AdminService
    **{f"AdjustGrantRequest.{f}": _NAME for f in ("organization", "dataset", "purpose")},
    **{f"AdjustGrantRequest.{f}": _number(0.0, MAX_EPSILON, _ADJUST) for f in ("epsilon", "max_epsilon_per_query")},
    **{f"AdjustGrantRequest.{f}": _number(0.0, MAX_RHO, _ADJUST) for f in ("rho", "max_rho_per_query")},
    "AdjustGrantRequest.delta": _number(0.0, 1.0, _ADJUST, open_=True),
    "AdjustGrantRequest.clear": _FLAG,
    "RevokeMemberRequest.identity": _NAME,
    "RevokeMemberRequest.reason": _text(REASON_CHARS),
    "RevokeOrganizationRequest.organization": _NAME,
    "RevokeOrganizationRequest.reason": _text(REASON_CHARS),
    "GetUsageRequest.period_start": _TIMESTAMP,
    "GetUsageRequest.period_end": _TIMESTAMP,
    "ListDatasetSpendingRequest.dataset": _NAME,
    "ListDatasetSpendingRequest.period_start": _TIMESTAMP,
    "ListDatasetSpendingRequest.period_end": _TIMESTAMP,
    "GetCapUsageRequest.dataset": _NAME,
    "ReinstateMemberRequest.identity": _NAME,
    "ReinstateMemberRequest.reason": _text(REASON_CHARS),
    "ReinstateOrganizationRequest.organization": _NAME,
    "ReinstateOrganizationRequest.reason": _text(REASON_CHARS),
    "ListAlertsRequest.include_acknowledged": _FLAG,
    "ListAlertsRequest.limit": _number(0, 1000, integer=True, what="; 0: 100"),
    "AcknowledgeAlertRequest.id": _number(0, MAX_SEQ, integer=True),
    "AcknowledgeAlertRequest.note": _text(REASON_CHARS),
    # AuditService
    **{f"{m}.before_seq": _number(0, MAX_SEQ, integer=True, what="; 0: from the newest")
       for m in ("ListAuditEntriesRequest", "ListMyRequestsRequest")},
    **{f"{m}.page_size": _number(0, MAX_PAGE, integer=True, what="; 0: 50")
       for m in ("ListAuditEntriesRequest", "ListMyRequestsRequest")},
    "ListAuditEntriesRequest.consumer": _NAME,
    "VerifyAuditLogRequest.require_sealed": _FLAG,
    "ExportAuditLogRequest.from_seq": _number(0, MAX_SEQ, integer=True, what="; 0: the first"),
    "ExportAuditLogRequest.max_entries": _number(0, MAX_EXPORT_ENTRIES, integer=True, what="; 0: 1000"),
    "VerifyReceiptRequest.receipt_json": _text(RECEIPT_CHARS),
    "GetMyReceiptRequest.request_id": _text(REQUEST_ID_CHARS),
    # VerificationService
    **{f"{m}.{f}": _NAME for m in ("VerifyRequest", "VerifyBatchRequest") for f in ("dataset", "template", "purpose")},
    **{f"{m}.subject": _text(SUBJECT_CHARS) for m in ("VerifyRequest", "Claim")},
    **{f"{m}.parameters": _map(MAX_PARAMETERS, NAME_CHARS) for m in ("VerifyRequest", "Claim")},
    **{f"{m}.case_reference": _text(CASE_REFERENCE_CHARS) for m in ("VerifyRequest", "Claim")},
    "ParamValue.int64_value": Limit("any (the template's list or ladder decides)"),
    "ParamValue.double_value": Limit("any (the template's list or ladder decides)"),
    "ParamValue.string_value": _text(PARAM_STRING_CHARS, " (a template's max_length may be less)"),
    "ParamValue.bool_value": _FLAG,
    "VerifyBatchRequest.claims": Limit(
        f"at most {MAX_BATCH:,} claims in the whole batch, {MAX_BATCH_MESSAGES:,} messages and "
        f"{MAX_BATCH_BYTES // 2**20} MiB; each claim's fields as in Claim", items=MAX_BATCH, deep=False),
    # ModelService
    **{f"{m}.{f}": lim for m in ("TrainModelRequest", "EvaluateModelRequest") for f, lim in {
        "dataset": _NAME, "purpose": _NAME, "request_id": _REQUEST_ID, "privacy_loss": _NESTED,
        "table": _NAME, "label": _NAME, "kind": _ENUM}.items()},
    "TrainModelRequest.features": Limit(
        f"at most {mp.MAX_FEATURES} names of at most {NAME_CHARS} characters", items=mp.MAX_FEATURES,
        chars=NAME_CHARS),
    "TrainModelRequest.iterations": _number(0, mp.MAX_ITERATIONS, _MODEL, what="; 0: the default (8)",
                                            integer=True),
    "TrainModelRequest.learning_rate": _number(0.0, 10.0, _MODEL, what="; 0: the default (1)"),
    "TrainModelRequest.clip": _number(0.0, 1e6, _MODEL, what="; 0 or above the analytic bound: the bound"),
    "TrainModelRequest.l2": _number(0.0, 1e6, _MODEL),
    "EvaluateModelRequest.coefficients": Limit(f"at most {mp.MAX_TERMS} coefficients", items=mp.MAX_TERMS),
    "Coefficient.term": _text(TERM_CHARS),
    "Coefficient.value": _number(-MAX_COEFFICIENT, MAX_COEFFICIENT, _MODEL),
    "EvaluateModelRequest.intercept": _number(-MAX_COEFFICIENT, MAX_COEFFICIENT, _MODEL),
    "EvaluateModelRequest.thresholds": Limit(
        f"at most {mp.MAX_THRESHOLDS} numbers, each in [0, 1]", items=mp.MAX_THRESHOLDS,
        low=0.0, high=1.0, reason=_MODEL),
    "EvaluateModelRequest.residual_bound": _number(0.0, MAX_COEFFICIENT, _MODEL, what="; 0: the label's range"),
}
"""Limits by `Message.field` (the field's full name without the package)."""


# -- checking ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MalformedMessage:
    """A request body that could not be decoded (`size` bytes); the interceptor refuses it."""

    size: int


def lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserializer` that returns `MalformedMessage` instead of raising (grpc would answer UNKNOWN,
    unaudited, with a traceback in the log)."""
    if deserializer is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            return MalformedMessage(len(data))

    return parse


def _key(fd: FieldDescriptor) -> str:
    return fd.full_name.removeprefix(PACKAGE + ".")


def _is_map(fd: FieldDescriptor) -> bool:
    return fd.message_type is not None and fd.message_type.GetOptions().map_entry


def check_request(message: Any) -> None:
    """Refuse a request message that breaks a limit of `LIMITS` (messages of other packages, e.g. the
    health check, are only checked for being decodable).

    Raises:
        InvalidArgumentError: MALFORMED_MESSAGE, FIELD_TOO_LONG, or the field's range reason, naming the
            field in metadata `field`.
    """
    if isinstance(message, MalformedMessage):
        raise InvalidArgumentError(
            f"the request message ({message.size} bytes) could not be decoded", reason="MALFORMED_MESSAGE",
            field="request", size=str(message.size))
    descriptor = getattr(message, "DESCRIPTOR", None)
    if descriptor is None or not descriptor.full_name.startswith(PACKAGE + "."):
        return
    _check(message, "")


def _check(message: Any, prefix: str) -> None:
    for fd, value in message.ListFields():
        limit = LIMITS[_key(fd)]
        path = prefix + fd.name
        if _is_map(fd):
            _check_map(fd, value, limit, path)
        elif fd.is_repeated:
            _check_count(path, len(value), limit)
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                if limit.deep:
                    for i, element in enumerate(value):
                        _check(element, f"{path}[{i}].")
            else:
                for i, element in enumerate(value):
                    _scalar(fd, element, limit, f"{path}[{i}]")
        elif fd.type == FieldDescriptor.TYPE_MESSAGE:
            _check(value, path + ".")
        else:
            _scalar(fd, value, limit, path)


def _check_map(fd: FieldDescriptor, value: Any, limit: Limit, path: str) -> None:
    _check_count(path, len(value), limit)
    entry = fd.message_type
    assert entry is not None  # a map field
    value_fd = entry.fields_by_name["value"]
    for key in value:
        if limit.key_chars is not None and isinstance(key, str) and len(key) > limit.key_chars:
            raise _too_long(path, len(key), limit.key_chars, "a key of ")
    for key, item in value.items():
        where = f"{path}[{key}]"
        if value_fd.type == FieldDescriptor.TYPE_MESSAGE:
            _check(item, where + ".")
        else:
            _scalar(value_fd, item, limit, where)


def _check_count(path: str, n: int, limit: Limit) -> None:
    if limit.items is not None and n > limit.items:
        raise InvalidArgumentError(
            f"{path} has {n} entries; the limit is {limit.items}", reason="FIELD_TOO_LONG", field=path,
            limit=str(limit.items), size=str(n))


def _too_long(path: str, size: int, limit: int, what: str = "") -> InvalidArgumentError:
    return InvalidArgumentError(
        f"{what}{path} is {size} characters long; the limit is {limit}", reason="FIELD_TOO_LONG",
        field=path, limit=str(limit), size=str(size))


def _scalar(fd: FieldDescriptor, value: Any, limit: Limit, path: str) -> None:
    if fd.type == FieldDescriptor.TYPE_STRING:
        if limit.chars is not None and len(value) > limit.chars:
            raise _too_long(path, len(value), limit.chars)
    elif fd.type == FieldDescriptor.TYPE_ENUM:
        if fd.enum_type is not None and value not in fd.enum_type.values_by_number:
            declared = ", ".join(v.name for v in fd.enum_type.values)
            raise InvalidArgumentError(f"{path} must be one of the declared values ({declared})", field=path,
                                       reason="FIELD_OUT_OF_RANGE", limit=declared, value=str(int(value)))
    elif fd.type in _NUMBERS and (limit.low is not None or limit.high is not None):
        _check_number(value, limit, path)


_NUMBERS = frozenset({FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_INT32,
                      FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64})


def _check_number(value: float, limit: Limit, path: str) -> None:
    low = -math.inf if limit.low is None else limit.low
    high = math.inf if limit.high is None else limit.high
    ok = math.isfinite(value) and low <= value and (value < high if limit.high_open else value <= high)
    if not ok:
        span = _span(low, high, limit.high_open)
        raise InvalidArgumentError(
            f"{path} must be a finite number in {span}, got {float(value)!r}", reason=limit.reason,
            field=path, limit=span, value=repr(float(value)))


def check_claims(subjects: list[str], case_references: list[str], offset: int = 0) -> None:
    """The text limits of a batch's claims, column-wise (`VerifyBatchRequest.claims` is not walked claim by
    claim: 100,000 claims would cost a fifth of a second); claim i of the lists is claim `offset + i`.

    Raises:
        InvalidArgumentError: FIELD_TOO_LONG naming the first claim that breaks a limit.
    """
    for name, values, chars in (("subject", subjects, SUBJECT_CHARS),
                                ("case_reference", case_references, CASE_REFERENCE_CHARS)):
        if values and max(map(len, values)) > chars:
            i = next(i for i, v in enumerate(values) if len(v) > chars)
            raise _too_long(f"claims[{offset + i}].{name}", len(values[i]), chars)


def check_claim_parameters(index: int, parameters: Mapping[str, object]) -> None:
    """The limits of claim `index`'s decoded parameter map (a batch checks each distinct map once).

    Raises:
        InvalidArgumentError: FIELD_TOO_LONG naming the claim's parameters.
    """
    path = f"claims[{index}].parameters"
    _check_count(path, len(parameters), LIMITS["Claim.parameters"])
    for key, value in parameters.items():
        if len(key) > NAME_CHARS:
            raise _too_long(path, len(key), NAME_CHARS, "a key of ")
        if isinstance(value, str) and len(value) > PARAM_STRING_CHARS:
            raise _too_long(f"{path}[{key}].string_value", len(value), PARAM_STRING_CHARS)


# -- documentation -------------------------------------------------------------------------------------------


def request_fields(files: Iterable[Any] | None = None) -> Iterator[FieldDescriptor]:
    """Every field of every request message of the gateway's services (nested messages included, map
    entries as their map field), each once."""
    if files is None:
        from gateway.rpc.methods import PROTO_FILES

        files = PROTO_FILES
    seen: set[str] = set()

    def walk(d: Descriptor) -> Iterator[FieldDescriptor]:
        if d.full_name in seen:
            return
        seen.add(d.full_name)
        for fd in d.fields:
            yield fd
            mt = fd.message_type
            if mt is None:
                continue
            if _is_map(fd):
                value = mt.fields_by_name["value"].message_type
                if value is not None:
                    yield from walk(value)
            else:
                yield from walk(mt)

    for f in files:
        for service in f.services_by_name.values():
            for method in service.methods:
                yield from walk(method.input_type)


def markdown_table() -> str:
    """docs/reference.md's table of request limits (one row per field, in proto order)."""
    rows = ["| field | limit |", "| --- | --- |"]
    rows += [f"| `{_key(fd)}` | {LIMITS[_key(fd)].text} |" for fd in request_fields()]
    return "\n".join(rows)
