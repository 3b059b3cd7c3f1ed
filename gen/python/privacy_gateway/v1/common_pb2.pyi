from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ColumnType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COLUMN_TYPE_UNSPECIFIED: _ClassVar[ColumnType]
    COLUMN_TYPE_INT64: _ClassVar[ColumnType]
    COLUMN_TYPE_DOUBLE: _ClassVar[ColumnType]
    COLUMN_TYPE_STRING: _ClassVar[ColumnType]
    COLUMN_TYPE_BOOL: _ClassVar[ColumnType]
COLUMN_TYPE_UNSPECIFIED: ColumnType
COLUMN_TYPE_INT64: ColumnType
COLUMN_TYPE_DOUBLE: ColumnType
COLUMN_TYPE_STRING: ColumnType
COLUMN_TYPE_BOOL: ColumnType

class PrivacyLoss(_message.Message):
    __slots__ = ("epsilon", "delta", "rho")
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    RHO_FIELD_NUMBER: _ClassVar[int]
    epsilon: float
    delta: float
    rho: float
    def __init__(self, epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., rho: _Optional[float] = ...) -> None: ...

class BudgetStatus(_message.Message):
    __slots__ = ("dataset", "purpose", "budget", "spent", "remaining", "max_per_query", "privacy_definition", "period", "period_start", "period_end", "refreshes_at", "organization", "limiting_level")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_QUERY_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_DEFINITION_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    REFRESHES_AT_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_FIELD_NUMBER: _ClassVar[int]
    LIMITING_LEVEL_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    purpose: str
    budget: PrivacyLoss
    spent: PrivacyLoss
    remaining: PrivacyLoss
    max_per_query: PrivacyLoss
    privacy_definition: str
    period: str
    period_start: str
    period_end: str
    refreshes_at: str
    organization: str
    limiting_level: str
    def __init__(self, dataset: _Optional[str] = ..., purpose: _Optional[str] = ..., budget: _Optional[_Union[PrivacyLoss, _Mapping]] = ..., spent: _Optional[_Union[PrivacyLoss, _Mapping]] = ..., remaining: _Optional[_Union[PrivacyLoss, _Mapping]] = ..., max_per_query: _Optional[_Union[PrivacyLoss, _Mapping]] = ..., privacy_definition: _Optional[str] = ..., period: _Optional[str] = ..., period_start: _Optional[str] = ..., period_end: _Optional[str] = ..., refreshes_at: _Optional[str] = ..., organization: _Optional[str] = ..., limiting_level: _Optional[str] = ...) -> None: ...
