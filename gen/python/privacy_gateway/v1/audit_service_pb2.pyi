from privacy_gateway.v1 import receipt_pb2 as _receipt_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AuditEntry(_message.Message):
    __slots__ = ("seq", "time", "request_id", "consumer", "rpc", "dataset", "purpose", "query", "outcome", "status_code", "reason", "epsilon", "delta", "rho", "charge", "released_digest", "hash")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    RPC_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    STATUS_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    RHO_FIELD_NUMBER: _ClassVar[int]
    CHARGE_FIELD_NUMBER: _ClassVar[int]
    RELEASED_DIGEST_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    seq: int
    time: str
    request_id: str
    consumer: str
    rpc: str
    dataset: str
    purpose: str
    query: str
    outcome: str
    status_code: str
    reason: str
    epsilon: float
    delta: float
    rho: float
    charge: str
    released_digest: str
    hash: str
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[str] = ..., request_id: _Optional[str] = ..., consumer: _Optional[str] = ..., rpc: _Optional[str] = ..., dataset: _Optional[str] = ..., purpose: _Optional[str] = ..., query: _Optional[str] = ..., outcome: _Optional[str] = ..., status_code: _Optional[str] = ..., reason: _Optional[str] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., rho: _Optional[float] = ..., charge: _Optional[str] = ..., released_digest: _Optional[str] = ..., hash: _Optional[str] = ...) -> None: ...

class ListAuditEntriesRequest(_message.Message):
    __slots__ = ("before_seq", "page_size", "consumer")
    BEFORE_SEQ_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    before_seq: int
    page_size: int
    consumer: str
    def __init__(self, before_seq: _Optional[int] = ..., page_size: _Optional[int] = ..., consumer: _Optional[str] = ...) -> None: ...

class ListAuditEntriesResponse(_message.Message):
    __slots__ = ("entries", "next_before_seq", "last_seq")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_BEFORE_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    next_before_seq: int
    last_seq: int
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ..., next_before_seq: _Optional[int] = ..., last_seq: _Optional[int] = ...) -> None: ...

class VerifyAuditLogRequest(_message.Message):
    __slots__ = ("require_sealed",)
    REQUIRE_SEALED_FIELD_NUMBER: _ClassVar[int]
    require_sealed: bool
    def __init__(self, require_sealed: _Optional[bool] = ...) -> None: ...

class AuditProblem(_message.Message):
    __slots__ = ("seq", "kind", "detail")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    seq: int
    kind: str
    detail: str
    def __init__(self, seq: _Optional[int] = ..., kind: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class VerifyAuditLogResponse(_message.Message):
    __slots__ = ("chain_ok", "entries", "seals", "sealed_through", "problems", "accounts_ok", "charges", "grant_months", "in_flight", "unaudited", "unmatched", "different", "duplicated")
    CHAIN_OK_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    SEALS_FIELD_NUMBER: _ClassVar[int]
    SEALED_THROUGH_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTS_OK_FIELD_NUMBER: _ClassVar[int]
    CHARGES_FIELD_NUMBER: _ClassVar[int]
    GRANT_MONTHS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    UNAUDITED_FIELD_NUMBER: _ClassVar[int]
    UNMATCHED_FIELD_NUMBER: _ClassVar[int]
    DIFFERENT_FIELD_NUMBER: _ClassVar[int]
    DUPLICATED_FIELD_NUMBER: _ClassVar[int]
    chain_ok: bool
    entries: int
    seals: int
    sealed_through: int
    problems: _containers.RepeatedCompositeFieldContainer[AuditProblem]
    accounts_ok: bool
    charges: int
    grant_months: int
    in_flight: int
    unaudited: _containers.RepeatedScalarFieldContainer[str]
    unmatched: _containers.RepeatedScalarFieldContainer[str]
    different: _containers.RepeatedScalarFieldContainer[str]
    duplicated: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, chain_ok: _Optional[bool] = ..., entries: _Optional[int] = ..., seals: _Optional[int] = ..., sealed_through: _Optional[int] = ..., problems: _Optional[_Iterable[_Union[AuditProblem, _Mapping]]] = ..., accounts_ok: _Optional[bool] = ..., charges: _Optional[int] = ..., grant_months: _Optional[int] = ..., in_flight: _Optional[int] = ..., unaudited: _Optional[_Iterable[str]] = ..., unmatched: _Optional[_Iterable[str]] = ..., different: _Optional[_Iterable[str]] = ..., duplicated: _Optional[_Iterable[str]] = ...) -> None: ...

class ExportAuditLogRequest(_message.Message):
    __slots__ = ("from_seq", "max_entries")
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    MAX_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    from_seq: int
    max_entries: int
    def __init__(self, from_seq: _Optional[int] = ..., max_entries: _Optional[int] = ...) -> None: ...

class ExportAuditLogResponse(_message.Message):
    __slots__ = ("export", "from_seq", "to_seq", "last_seq")
    EXPORT_FIELD_NUMBER: _ClassVar[int]
    FROM_SEQ_FIELD_NUMBER: _ClassVar[int]
    TO_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    export: bytes
    from_seq: int
    to_seq: int
    last_seq: int
    def __init__(self, export: _Optional[bytes] = ..., from_seq: _Optional[int] = ..., to_seq: _Optional[int] = ..., last_seq: _Optional[int] = ...) -> None: ...

class VerifyReceiptRequest(_message.Message):
    __slots__ = ("receipt_json",)
    RECEIPT_JSON_FIELD_NUMBER: _ClassVar[int]
    receipt_json: str
    def __init__(self, receipt_json: _Optional[str] = ...) -> None: ...

class VerifyReceiptResponse(_message.Message):
    __slots__ = ("valid", "key_id", "payload_json", "problem")
    VALID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    valid: bool
    key_id: str
    payload_json: str
    problem: str
    def __init__(self, valid: _Optional[bool] = ..., key_id: _Optional[str] = ..., payload_json: _Optional[str] = ..., problem: _Optional[str] = ...) -> None: ...

class ListMyRequestsRequest(_message.Message):
    __slots__ = ("before_seq", "page_size")
    BEFORE_SEQ_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    before_seq: int
    page_size: int
    def __init__(self, before_seq: _Optional[int] = ..., page_size: _Optional[int] = ...) -> None: ...

class ListMyRequestsResponse(_message.Message):
    __slots__ = ("entries", "next_before_seq")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_BEFORE_SEQ_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    next_before_seq: int
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ..., next_before_seq: _Optional[int] = ...) -> None: ...

class GetMyReceiptRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class GetMyReceiptResponse(_message.Message):
    __slots__ = ("receipt",)
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    receipt: _receipt_pb2.Receipt
    def __init__(self, receipt: _Optional[_Union[_receipt_pb2.Receipt, _Mapping]] = ...) -> None: ...

class GetTransparencyReportRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TransparencyPeriod(_message.Message):
    __slots__ = ("month", "answered", "refused", "epsilon", "delta", "rho")
    MONTH_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    RHO_FIELD_NUMBER: _ClassVar[int]
    month: str
    answered: int
    refused: int
    epsilon: float
    delta: float
    rho: float
    def __init__(self, month: _Optional[str] = ..., answered: _Optional[int] = ..., refused: _Optional[int] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., rho: _Optional[float] = ...) -> None: ...

class TransparencyPurpose(_message.Message):
    __slots__ = ("purpose", "description", "use_class", "answered", "epsilon")
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    USE_CLASS_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    purpose: str
    description: str
    use_class: str
    answered: int
    epsilon: float
    def __init__(self, purpose: _Optional[str] = ..., description: _Optional[str] = ..., use_class: _Optional[str] = ..., answered: _Optional[int] = ..., epsilon: _Optional[float] = ...) -> None: ...

class TransparencyDataset(_message.Message):
    __slots__ = ("name", "description", "owner", "tables", "periods", "purposes", "organizations")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    PERIODS_FIELD_NUMBER: _ClassVar[int]
    PURPOSES_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    owner: str
    tables: _containers.RepeatedScalarFieldContainer[str]
    periods: _containers.RepeatedCompositeFieldContainer[TransparencyPeriod]
    purposes: _containers.RepeatedCompositeFieldContainer[TransparencyPurpose]
    organizations: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., owner: _Optional[str] = ..., tables: _Optional[_Iterable[str]] = ..., periods: _Optional[_Iterable[_Union[TransparencyPeriod, _Mapping]]] = ..., purposes: _Optional[_Iterable[_Union[TransparencyPurpose, _Mapping]]] = ..., organizations: _Optional[_Iterable[str]] = ...) -> None: ...

class GetTransparencyReportResponse(_message.Message):
    __slots__ = ("datasets", "at")
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[TransparencyDataset]
    at: str
    def __init__(self, datasets: _Optional[_Iterable[_Union[TransparencyDataset, _Mapping]]] = ..., at: _Optional[str] = ...) -> None: ...
