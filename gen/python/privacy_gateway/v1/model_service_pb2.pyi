from privacy_gateway.v1 import common_pb2 as _common_pb2
from privacy_gateway.v1 import receipt_pb2 as _receipt_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_KIND_UNSPECIFIED: _ClassVar[ModelKind]
    MODEL_KIND_LINEAR: _ClassVar[ModelKind]
    MODEL_KIND_LOGISTIC: _ClassVar[ModelKind]
MODEL_KIND_UNSPECIFIED: ModelKind
MODEL_KIND_LINEAR: ModelKind
MODEL_KIND_LOGISTIC: ModelKind

class TrainModelRequest(_message.Message):
    __slots__ = ("dataset", "purpose", "request_id", "privacy_loss", "table", "features", "label", "kind", "iterations", "learning_rate", "clip", "l2")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_LOSS_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    L2_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    purpose: str
    request_id: str
    privacy_loss: _common_pb2.PrivacyLoss
    table: str
    features: _containers.RepeatedScalarFieldContainer[str]
    label: str
    kind: ModelKind
    iterations: int
    learning_rate: float
    clip: float
    l2: float
    def __init__(self, dataset: _Optional[str] = ..., purpose: _Optional[str] = ..., request_id: _Optional[str] = ..., privacy_loss: _Optional[_Union[_common_pb2.PrivacyLoss, _Mapping]] = ..., table: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ..., label: _Optional[str] = ..., kind: _Optional[_Union[ModelKind, str]] = ..., iterations: _Optional[int] = ..., learning_rate: _Optional[float] = ..., clip: _Optional[float] = ..., l2: _Optional[float] = ...) -> None: ...

class Estimate(_message.Message):
    __slots__ = ("name", "value", "has_interval", "ci_lower", "ci_upper", "note")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    HAS_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    CI_LOWER_FIELD_NUMBER: _ClassVar[int]
    CI_UPPER_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    has_interval: bool
    ci_lower: float
    ci_upper: float
    note: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., has_interval: _Optional[bool] = ..., ci_lower: _Optional[float] = ..., ci_upper: _Optional[float] = ..., note: _Optional[str] = ...) -> None: ...

class ModelReleaseCost(_message.Message):
    __slots__ = ("component", "mechanism", "sensitivity", "scale", "privacy_loss", "rho", "count")
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    SENSITIVITY_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_LOSS_FIELD_NUMBER: _ClassVar[int]
    RHO_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    component: str
    mechanism: str
    sensitivity: float
    scale: float
    privacy_loss: _common_pb2.PrivacyLoss
    rho: float
    count: int
    def __init__(self, component: _Optional[str] = ..., mechanism: _Optional[str] = ..., sensitivity: _Optional[float] = ..., scale: _Optional[float] = ..., privacy_loss: _Optional[_Union[_common_pb2.PrivacyLoss, _Mapping]] = ..., rho: _Optional[float] = ..., count: _Optional[int] = ...) -> None: ...

class TrainModelResponse(_message.Message):
    __slots__ = ("kind", "coefficients", "intercept", "metrics", "releases", "privacy_cost", "budget", "request_id", "dataset_version", "replayed", "receipt")
    KIND_FIELD_NUMBER: _ClassVar[int]
    COEFFICIENTS_FIELD_NUMBER: _ClassVar[int]
    INTERCEPT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    RELEASES_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_COST_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    kind: ModelKind
    coefficients: _containers.RepeatedCompositeFieldContainer[Estimate]
    intercept: Estimate
    metrics: _containers.RepeatedCompositeFieldContainer[Estimate]
    releases: _containers.RepeatedCompositeFieldContainer[ModelReleaseCost]
    privacy_cost: _common_pb2.PrivacyLoss
    budget: _common_pb2.BudgetStatus
    request_id: str
    dataset_version: str
    replayed: bool
    receipt: _receipt_pb2.Receipt
    def __init__(self, kind: _Optional[_Union[ModelKind, str]] = ..., coefficients: _Optional[_Iterable[_Union[Estimate, _Mapping]]] = ..., intercept: _Optional[_Union[Estimate, _Mapping]] = ..., metrics: _Optional[_Iterable[_Union[Estimate, _Mapping]]] = ..., releases: _Optional[_Iterable[_Union[ModelReleaseCost, _Mapping]]] = ..., privacy_cost: _Optional[_Union[_common_pb2.PrivacyLoss, _Mapping]] = ..., budget: _Optional[_Union[_common_pb2.BudgetStatus, _Mapping]] = ..., request_id: _Optional[str] = ..., dataset_version: _Optional[str] = ..., replayed: _Optional[bool] = ..., receipt: _Optional[_Union[_receipt_pb2.Receipt, _Mapping]] = ...) -> None: ...

class Coefficient(_message.Message):
    __slots__ = ("term", "value")
    TERM_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    term: str
    value: float
    def __init__(self, term: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...

class EvaluateModelRequest(_message.Message):
    __slots__ = ("dataset", "purpose", "request_id", "privacy_loss", "table", "kind", "coefficients", "intercept", "label", "thresholds", "residual_bound")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_LOSS_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    COEFFICIENTS_FIELD_NUMBER: _ClassVar[int]
    INTERCEPT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    RESIDUAL_BOUND_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    purpose: str
    request_id: str
    privacy_loss: _common_pb2.PrivacyLoss
    table: str
    kind: ModelKind
    coefficients: _containers.RepeatedCompositeFieldContainer[Coefficient]
    intercept: float
    label: str
    thresholds: _containers.RepeatedScalarFieldContainer[float]
    residual_bound: float
    def __init__(self, dataset: _Optional[str] = ..., purpose: _Optional[str] = ..., request_id: _Optional[str] = ..., privacy_loss: _Optional[_Union[_common_pb2.PrivacyLoss, _Mapping]] = ..., table: _Optional[str] = ..., kind: _Optional[_Union[ModelKind, str]] = ..., coefficients: _Optional[_Iterable[_Union[Coefficient, _Mapping]]] = ..., intercept: _Optional[float] = ..., label: _Optional[str] = ..., thresholds: _Optional[_Iterable[float]] = ..., residual_bound: _Optional[float] = ...) -> None: ...

class ConfusionMatrix(_message.Message):
    __slots__ = ("threshold", "tp", "fp", "tn", "fn")
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    TP_FIELD_NUMBER: _ClassVar[int]
    FP_FIELD_NUMBER: _ClassVar[int]
    TN_FIELD_NUMBER: _ClassVar[int]
    FN_FIELD_NUMBER: _ClassVar[int]
    threshold: float
    tp: Estimate
    fp: Estimate
    tn: Estimate
    fn: Estimate
    def __init__(self, threshold: _Optional[float] = ..., tp: _Optional[_Union[Estimate, _Mapping]] = ..., fp: _Optional[_Union[Estimate, _Mapping]] = ..., tn: _Optional[_Union[Estimate, _Mapping]] = ..., fn: _Optional[_Union[Estimate, _Mapping]] = ...) -> None: ...

class EvaluateModelResponse(_message.Message):
    __slots__ = ("kind", "metrics", "confusion", "releases", "privacy_cost", "budget", "request_id", "dataset_version", "replayed", "receipt")
    KIND_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    CONFUSION_FIELD_NUMBER: _ClassVar[int]
    RELEASES_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_COST_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    kind: ModelKind
    metrics: _containers.RepeatedCompositeFieldContainer[Estimate]
    confusion: _containers.RepeatedCompositeFieldContainer[ConfusionMatrix]
    releases: _containers.RepeatedCompositeFieldContainer[ModelReleaseCost]
    privacy_cost: _common_pb2.PrivacyLoss
    budget: _common_pb2.BudgetStatus
    request_id: str
    dataset_version: str
    replayed: bool
    receipt: _receipt_pb2.Receipt
    def __init__(self, kind: _Optional[_Union[ModelKind, str]] = ..., metrics: _Optional[_Iterable[_Union[Estimate, _Mapping]]] = ..., confusion: _Optional[_Iterable[_Union[ConfusionMatrix, _Mapping]]] = ..., releases: _Optional[_Iterable[_Union[ModelReleaseCost, _Mapping]]] = ..., privacy_cost: _Optional[_Union[_common_pb2.PrivacyLoss, _Mapping]] = ..., budget: _Optional[_Union[_common_pb2.BudgetStatus, _Mapping]] = ..., request_id: _Optional[str] = ..., dataset_version: _Optional[str] = ..., replayed: _Optional[bool] = ..., receipt: _Optional[_Union[_receipt_pb2.Receipt, _Mapping]] = ...) -> None: ...
