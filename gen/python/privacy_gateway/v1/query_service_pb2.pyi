from privacy_gateway.v1 import common_pb2 as _common_pb2
from privacy_gateway.v1 import receipt_pb2 as _receipt_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunQueryRequest(_message.Message):
    __slots__ = ("dataset", "sql", "privacy_loss", "purpose", "request_id", "weights", "accuracy", "interval_shares")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class IntervalSharesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SQL_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_LOSS_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_SHARES_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    sql: str
    privacy_loss: _common_pb2.PrivacyLoss
    purpose: str
    request_id: str
    weights: _containers.ScalarMap[str, float]
    accuracy: AccuracyTarget
    interval_shares: _containers.ScalarMap[str, float]
    def __init__(self, dataset: _Optional[str] = ..., sql: _Optional[str] = ..., privacy_loss: _Optional[_Union[_common_pb2.PrivacyLoss, _Mapping]] = ..., purpose: _Optional[str] = ..., request_id: _Optional[str] = ..., weights: _Optional[_Mapping[str, float]] = ..., accuracy: _Optional[_Union[AccuracyTarget, _Mapping]] = ..., interval_shares: _Optional[_Mapping[str, float]] = ...) -> None: ...

class AccuracyTarget(_message.Message):
    __slots__ = ("half_width_95", "per_output")
    class PerOutputEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    HALF_WIDTH_95_FIELD_NUMBER: _ClassVar[int]
    PER_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    half_width_95: float
    per_output: _containers.ScalarMap[str, float]
    def __init__(self, half_width_95: _Optional[float] = ..., per_output: _Optional[_Mapping[str, float]] = ...) -> None: ...

class RunQueryResponse(_message.Message):
    __slots__ = ("columns", "rows", "plan", "privacy_cost", "budget", "request_id", "dataset_version", "replayed", "receipt", "cached")
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_COST_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    columns: _containers.RepeatedCompositeFieldContainer[ResultColumn]
    rows: _containers.RepeatedCompositeFieldContainer[Row]
    plan: QueryPlanInfo
    privacy_cost: _common_pb2.PrivacyLoss
    budget: _common_pb2.BudgetStatus
    request_id: str
    dataset_version: str
    replayed: bool
    receipt: _receipt_pb2.Receipt
    cached: bool
    def __init__(self, columns: _Optional[_Iterable[_Union[ResultColumn, _Mapping]]] = ..., rows: _Optional[_Iterable[_Union[Row, _Mapping]]] = ..., plan: _Optional[_Union[QueryPlanInfo, _Mapping]] = ..., privacy_cost: _Optional[_Union[_common_pb2.PrivacyLoss, _Mapping]] = ..., budget: _Optional[_Union[_common_pb2.BudgetStatus, _Mapping]] = ..., request_id: _Optional[str] = ..., dataset_version: _Optional[str] = ..., replayed: _Optional[bool] = ..., receipt: _Optional[_Union[_receipt_pb2.Receipt, _Mapping]] = ..., cached: _Optional[bool] = ...) -> None: ...

class ExplainQueryRequest(_message.Message):
    __slots__ = ("dataset", "sql", "privacy_loss", "purpose", "weights", "accuracy", "interval_shares")
    class WeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class IntervalSharesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SQL_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_LOSS_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_SHARES_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    sql: str
    privacy_loss: _common_pb2.PrivacyLoss
    purpose: str
    weights: _containers.ScalarMap[str, float]
    accuracy: AccuracyTarget
    interval_shares: _containers.ScalarMap[str, float]
    def __init__(self, dataset: _Optional[str] = ..., sql: _Optional[str] = ..., privacy_loss: _Optional[_Union[_common_pb2.PrivacyLoss, _Mapping]] = ..., purpose: _Optional[str] = ..., weights: _Optional[_Mapping[str, float]] = ..., accuracy: _Optional[_Union[AccuracyTarget, _Mapping]] = ..., interval_shares: _Optional[_Mapping[str, float]] = ...) -> None: ...

class ExplainQueryResponse(_message.Message):
    __slots__ = ("plan", "privacy_cost", "budget", "affordable")
    PLAN_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_COST_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    AFFORDABLE_FIELD_NUMBER: _ClassVar[int]
    plan: QueryPlanInfo
    privacy_cost: _common_pb2.PrivacyLoss
    budget: _common_pb2.BudgetStatus
    affordable: bool
    def __init__(self, plan: _Optional[_Union[QueryPlanInfo, _Mapping]] = ..., privacy_cost: _Optional[_Union[_common_pb2.PrivacyLoss, _Mapping]] = ..., budget: _Optional[_Union[_common_pb2.BudgetStatus, _Mapping]] = ..., affordable: _Optional[bool] = ...) -> None: ...

class ResultColumn(_message.Message):
    __slots__ = ("name", "type", "noisy", "aggregate")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    NOISY_FIELD_NUMBER: _ClassVar[int]
    AGGREGATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: _common_pb2.ColumnType
    noisy: bool
    aggregate: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[_common_pb2.ColumnType, str]] = ..., noisy: _Optional[bool] = ..., aggregate: _Optional[str] = ...) -> None: ...

class Row(_message.Message):
    __slots__ = ("cells",)
    CELLS_FIELD_NUMBER: _ClassVar[int]
    cells: _containers.RepeatedCompositeFieldContainer[Cell]
    def __init__(self, cells: _Optional[_Iterable[_Union[Cell, _Mapping]]] = ...) -> None: ...

class Cell(_message.Message):
    __slots__ = ("int64_value", "double_value", "string_value", "bool_value", "null_value", "noise", "confidence_interval")
    INT64_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    NULL_VALUE_FIELD_NUMBER: _ClassVar[int]
    NOISE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    int64_value: int
    double_value: float
    string_value: str
    bool_value: bool
    null_value: bool
    noise: NoiseInfo
    confidence_interval: ConfidenceInterval
    def __init__(self, int64_value: _Optional[int] = ..., double_value: _Optional[float] = ..., string_value: _Optional[str] = ..., bool_value: _Optional[bool] = ..., null_value: _Optional[bool] = ..., noise: _Optional[_Union[NoiseInfo, _Mapping]] = ..., confidence_interval: _Optional[_Union[ConfidenceInterval, _Mapping]] = ...) -> None: ...

class NoiseInfo(_message.Message):
    __slots__ = ("mechanism", "scale", "stddev")
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    STDDEV_FIELD_NUMBER: _ClassVar[int]
    mechanism: str
    scale: float
    stddev: float
    def __init__(self, mechanism: _Optional[str] = ..., scale: _Optional[float] = ..., stddev: _Optional[float] = ...) -> None: ...

class ConfidenceInterval(_message.Message):
    __slots__ = ("lower", "upper", "level")
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    lower: float
    upper: float
    level: float
    def __init__(self, lower: _Optional[float] = ..., upper: _Optional[float] = ..., level: _Optional[float] = ...) -> None: ...

class QueryPlanInfo(_message.Message):
    __slots__ = ("table", "group_by", "group_by_mode", "row_count", "releases", "max_rows_per_unit", "privacy_unit", "threshold", "tables")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_MODE_FIELD_NUMBER: _ClassVar[int]
    ROW_COUNT_FIELD_NUMBER: _ClassVar[int]
    RELEASES_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_PER_UNIT_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_UNIT_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    table: str
    group_by: _containers.RepeatedScalarFieldContainer[str]
    group_by_mode: str
    row_count: int
    releases: _containers.RepeatedCompositeFieldContainer[ReleaseCost]
    max_rows_per_unit: int
    privacy_unit: str
    threshold: int
    tables: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, table: _Optional[str] = ..., group_by: _Optional[_Iterable[str]] = ..., group_by_mode: _Optional[str] = ..., row_count: _Optional[int] = ..., releases: _Optional[_Iterable[_Union[ReleaseCost, _Mapping]]] = ..., max_rows_per_unit: _Optional[int] = ..., privacy_unit: _Optional[str] = ..., threshold: _Optional[int] = ..., tables: _Optional[_Iterable[str]] = ...) -> None: ...

class ReleaseCost(_message.Message):
    __slots__ = ("output", "component", "mechanism", "sensitivity", "scale", "privacy_loss", "half_width_95")
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    SENSITIVITY_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_LOSS_FIELD_NUMBER: _ClassVar[int]
    HALF_WIDTH_95_FIELD_NUMBER: _ClassVar[int]
    output: str
    component: str
    mechanism: str
    sensitivity: float
    scale: float
    privacy_loss: _common_pb2.PrivacyLoss
    half_width_95: float
    def __init__(self, output: _Optional[str] = ..., component: _Optional[str] = ..., mechanism: _Optional[str] = ..., sensitivity: _Optional[float] = ..., scale: _Optional[float] = ..., privacy_loss: _Optional[_Union[_common_pb2.PrivacyLoss, _Mapping]] = ..., half_width_95: _Optional[float] = ...) -> None: ...
