from privacy_gateway.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OrganizationMember(_message.Message):
    __slots__ = ("identity", "roles", "revoked")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    identity: str
    roles: _containers.RepeatedScalarFieldContainer[str]
    revoked: bool
    def __init__(self, identity: _Optional[str] = ..., roles: _Optional[_Iterable[str]] = ..., revoked: _Optional[bool] = ...) -> None: ...

class MemberBudgetStatus(_message.Message):
    __slots__ = ("member", "budget", "spent", "remaining")
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    member: str
    budget: _common_pb2.PrivacyLoss
    spent: _common_pb2.PrivacyLoss
    remaining: _common_pb2.PrivacyLoss
    def __init__(self, member: _Optional[str] = ..., budget: _Optional[_Union[_common_pb2.PrivacyLoss, _Mapping]] = ..., spent: _Optional[_Union[_common_pb2.PrivacyLoss, _Mapping]] = ..., remaining: _Optional[_Union[_common_pb2.PrivacyLoss, _Mapping]] = ...) -> None: ...

class GrantSummary(_message.Message):
    __slots__ = ("organization", "dataset", "purpose", "use_class", "budget", "members", "adjusted")
    ORGANIZATION_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    USE_CLASS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    ADJUSTED_FIELD_NUMBER: _ClassVar[int]
    organization: str
    dataset: str
    purpose: str
    use_class: str
    budget: _common_pb2.BudgetStatus
    members: _containers.RepeatedCompositeFieldContainer[MemberBudgetStatus]
    adjusted: bool
    def __init__(self, organization: _Optional[str] = ..., dataset: _Optional[str] = ..., purpose: _Optional[str] = ..., use_class: _Optional[str] = ..., budget: _Optional[_Union[_common_pb2.BudgetStatus, _Mapping]] = ..., members: _Optional[_Iterable[_Union[MemberBudgetStatus, _Mapping]]] = ..., adjusted: _Optional[bool] = ...) -> None: ...

class Organization(_message.Message):
    __slots__ = ("id", "name", "members", "grants", "revoked", "datasets")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    members: _containers.RepeatedCompositeFieldContainer[OrganizationMember]
    grants: _containers.RepeatedCompositeFieldContainer[GrantSummary]
    revoked: bool
    datasets: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., members: _Optional[_Iterable[_Union[OrganizationMember, _Mapping]]] = ..., grants: _Optional[_Iterable[_Union[GrantSummary, _Mapping]]] = ..., revoked: _Optional[bool] = ..., datasets: _Optional[_Iterable[str]] = ...) -> None: ...

class ListOrganizationsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListOrganizationsResponse(_message.Message):
    __slots__ = ("organizations",)
    ORGANIZATIONS_FIELD_NUMBER: _ClassVar[int]
    organizations: _containers.RepeatedCompositeFieldContainer[Organization]
    def __init__(self, organizations: _Optional[_Iterable[_Union[Organization, _Mapping]]] = ...) -> None: ...

class AdjustGrantRequest(_message.Message):
    __slots__ = ("organization", "dataset", "purpose", "epsilon", "delta", "max_epsilon_per_query", "rho", "max_rho_per_query", "clear")
    ORGANIZATION_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    MAX_EPSILON_PER_QUERY_FIELD_NUMBER: _ClassVar[int]
    RHO_FIELD_NUMBER: _ClassVar[int]
    MAX_RHO_PER_QUERY_FIELD_NUMBER: _ClassVar[int]
    CLEAR_FIELD_NUMBER: _ClassVar[int]
    organization: str
    dataset: str
    purpose: str
    epsilon: float
    delta: float
    max_epsilon_per_query: float
    rho: float
    max_rho_per_query: float
    clear: bool
    def __init__(self, organization: _Optional[str] = ..., dataset: _Optional[str] = ..., purpose: _Optional[str] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., max_epsilon_per_query: _Optional[float] = ..., rho: _Optional[float] = ..., max_rho_per_query: _Optional[float] = ..., clear: _Optional[bool] = ...) -> None: ...

class AdjustGrantResponse(_message.Message):
    __slots__ = ("grant",)
    GRANT_FIELD_NUMBER: _ClassVar[int]
    grant: GrantSummary
    def __init__(self, grant: _Optional[_Union[GrantSummary, _Mapping]] = ...) -> None: ...

class RevokeMemberRequest(_message.Message):
    __slots__ = ("identity", "reason")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    identity: str
    reason: str
    def __init__(self, identity: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeMemberResponse(_message.Message):
    __slots__ = ("identity",)
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    identity: str
    def __init__(self, identity: _Optional[str] = ...) -> None: ...

class RevokeOrganizationRequest(_message.Message):
    __slots__ = ("organization", "reason")
    ORGANIZATION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    organization: str
    reason: str
    def __init__(self, organization: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class RevokeOrganizationResponse(_message.Message):
    __slots__ = ("organization",)
    ORGANIZATION_FIELD_NUMBER: _ClassVar[int]
    organization: str
    def __init__(self, organization: _Optional[str] = ...) -> None: ...

class ReloadPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReloadPolicyResponse(_message.Message):
    __slots__ = ("source", "schema", "organizations", "grants", "owner_settings_reloaded", "owner_settings_message", "adjusted_grants")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATIONS_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    OWNER_SETTINGS_RELOADED_FIELD_NUMBER: _ClassVar[int]
    OWNER_SETTINGS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ADJUSTED_GRANTS_FIELD_NUMBER: _ClassVar[int]
    source: str
    schema: str
    organizations: int
    grants: int
    owner_settings_reloaded: bool
    owner_settings_message: str
    adjusted_grants: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, source: _Optional[str] = ..., schema: _Optional[str] = ..., organizations: _Optional[int] = ..., grants: _Optional[int] = ..., owner_settings_reloaded: _Optional[bool] = ..., owner_settings_message: _Optional[str] = ..., adjusted_grants: _Optional[_Iterable[str]] = ...) -> None: ...

class GetUsageRequest(_message.Message):
    __slots__ = ("period_start", "period_end")
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    period_start: str
    period_end: str
    def __init__(self, period_start: _Optional[str] = ..., period_end: _Optional[str] = ...) -> None: ...

class GetUsageResponse(_message.Message):
    __slots__ = ("json", "csv")
    JSON_FIELD_NUMBER: _ClassVar[int]
    CSV_FIELD_NUMBER: _ClassVar[int]
    json: str
    csv: str
    def __init__(self, json: _Optional[str] = ..., csv: _Optional[str] = ...) -> None: ...

class ListDatasetSpendingRequest(_message.Message):
    __slots__ = ("dataset", "period_start", "period_end")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    period_start: str
    period_end: str
    def __init__(self, dataset: _Optional[str] = ..., period_start: _Optional[str] = ..., period_end: _Optional[str] = ...) -> None: ...

class SpendingEntry(_message.Message):
    __slots__ = ("time", "organization", "member", "purpose", "use_class", "dataset", "request_id", "outcome", "reason", "epsilon")
    TIME_FIELD_NUMBER: _ClassVar[int]
    ORGANIZATION_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    USE_CLASS_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    time: str
    organization: str
    member: str
    purpose: str
    use_class: str
    dataset: str
    request_id: str
    outcome: str
    reason: str
    epsilon: float
    def __init__(self, time: _Optional[str] = ..., organization: _Optional[str] = ..., member: _Optional[str] = ..., purpose: _Optional[str] = ..., use_class: _Optional[str] = ..., dataset: _Optional[str] = ..., request_id: _Optional[str] = ..., outcome: _Optional[str] = ..., reason: _Optional[str] = ..., epsilon: _Optional[float] = ...) -> None: ...

class ListDatasetSpendingResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[SpendingEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[SpendingEntry, _Mapping]]] = ...) -> None: ...

class GetCapUsageRequest(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    def __init__(self, dataset: _Optional[str] = ...) -> None: ...

class CapAmount(_message.Message):
    __slots__ = ("epsilon", "delta", "rho")
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    RHO_FIELD_NUMBER: _ClassVar[int]
    epsilon: float
    delta: float
    rho: float
    def __init__(self, epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., rho: _Optional[float] = ...) -> None: ...

class CapSpending(_message.Message):
    __slots__ = ("available", "error", "period_spent", "period_remaining", "lifetime_spent", "lifetime_remaining", "period_uncounted", "lifetime_uncounted")
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PERIOD_SPENT_FIELD_NUMBER: _ClassVar[int]
    PERIOD_REMAINING_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_SPENT_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_REMAINING_FIELD_NUMBER: _ClassVar[int]
    PERIOD_UNCOUNTED_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_UNCOUNTED_FIELD_NUMBER: _ClassVar[int]
    available: bool
    error: str
    period_spent: CapAmount
    period_remaining: CapAmount
    lifetime_spent: CapAmount
    lifetime_remaining: CapAmount
    period_uncounted: bool
    lifetime_uncounted: bool
    def __init__(self, available: _Optional[bool] = ..., error: _Optional[str] = ..., period_spent: _Optional[_Union[CapAmount, _Mapping]] = ..., period_remaining: _Optional[_Union[CapAmount, _Mapping]] = ..., lifetime_spent: _Optional[_Union[CapAmount, _Mapping]] = ..., lifetime_remaining: _Optional[_Union[CapAmount, _Mapping]] = ..., period_uncounted: _Optional[bool] = ..., lifetime_uncounted: _Optional[bool] = ...) -> None: ...

class DatasetCapUsage(_message.Message):
    __slots__ = ("dataset", "owner", "capped", "measure", "per_period", "period", "period_start", "period_end", "conversion_delta", "lifetime", "sandbox", "gateway", "columns")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    CAPPED_FIELD_NUMBER: _ClassVar[int]
    MEASURE_FIELD_NUMBER: _ClassVar[int]
    PER_PERIOD_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    CONVERSION_DELTA_FIELD_NUMBER: _ClassVar[int]
    LIFETIME_FIELD_NUMBER: _ClassVar[int]
    SANDBOX_FIELD_NUMBER: _ClassVar[int]
    GATEWAY_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    owner: str
    capped: bool
    measure: str
    per_period: CapAmount
    period: str
    period_start: str
    period_end: str
    conversion_delta: float
    lifetime: CapAmount
    sandbox: CapSpending
    gateway: CapSpending
    columns: _containers.RepeatedCompositeFieldContainer[ColumnGrade]
    def __init__(self, dataset: _Optional[str] = ..., owner: _Optional[str] = ..., capped: _Optional[bool] = ..., measure: _Optional[str] = ..., per_period: _Optional[_Union[CapAmount, _Mapping]] = ..., period: _Optional[str] = ..., period_start: _Optional[str] = ..., period_end: _Optional[str] = ..., conversion_delta: _Optional[float] = ..., lifetime: _Optional[_Union[CapAmount, _Mapping]] = ..., sandbox: _Optional[_Union[CapSpending, _Mapping]] = ..., gateway: _Optional[_Union[CapSpending, _Mapping]] = ..., columns: _Optional[_Iterable[_Union[ColumnGrade, _Mapping]]] = ...) -> None: ...

class ColumnGrade(_message.Message):
    __slots__ = ("table", "column", "grade")
    TABLE_FIELD_NUMBER: _ClassVar[int]
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    GRADE_FIELD_NUMBER: _ClassVar[int]
    table: str
    column: str
    grade: str
    def __init__(self, table: _Optional[str] = ..., column: _Optional[str] = ..., grade: _Optional[str] = ...) -> None: ...

class GradeRule(_message.Message):
    __slots__ = ("grade", "uses")
    GRADE_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    grade: str
    uses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, grade: _Optional[str] = ..., uses: _Optional[_Iterable[str]] = ...) -> None: ...

class GetCapUsageResponse(_message.Message):
    __slots__ = ("datasets", "at", "grade_rules")
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    GRADE_RULES_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetCapUsage]
    at: str
    grade_rules: _containers.RepeatedCompositeFieldContainer[GradeRule]
    def __init__(self, datasets: _Optional[_Iterable[_Union[DatasetCapUsage, _Mapping]]] = ..., at: _Optional[str] = ..., grade_rules: _Optional[_Iterable[_Union[GradeRule, _Mapping]]] = ...) -> None: ...

class ReinstateMemberRequest(_message.Message):
    __slots__ = ("identity", "reason")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    identity: str
    reason: str
    def __init__(self, identity: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ReinstateMemberResponse(_message.Message):
    __slots__ = ("identity", "was_revoked")
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    WAS_REVOKED_FIELD_NUMBER: _ClassVar[int]
    identity: str
    was_revoked: bool
    def __init__(self, identity: _Optional[str] = ..., was_revoked: _Optional[bool] = ...) -> None: ...

class ReinstateOrganizationRequest(_message.Message):
    __slots__ = ("organization", "reason")
    ORGANIZATION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    organization: str
    reason: str
    def __init__(self, organization: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ReinstateOrganizationResponse(_message.Message):
    __slots__ = ("organization", "was_revoked")
    ORGANIZATION_FIELD_NUMBER: _ClassVar[int]
    WAS_REVOKED_FIELD_NUMBER: _ClassVar[int]
    organization: str
    was_revoked: bool
    def __init__(self, organization: _Optional[str] = ..., was_revoked: _Optional[bool] = ...) -> None: ...

class ListAlertsRequest(_message.Message):
    __slots__ = ("include_acknowledged", "limit")
    INCLUDE_ACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    include_acknowledged: bool
    limit: int
    def __init__(self, include_acknowledged: _Optional[bool] = ..., limit: _Optional[int] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("id", "time", "rule", "subject", "detail", "acknowledged_by", "acknowledged_at", "note")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_BY_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_AT_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    id: int
    time: str
    rule: str
    subject: str
    detail: str
    acknowledged_by: str
    acknowledged_at: str
    note: str
    def __init__(self, id: _Optional[int] = ..., time: _Optional[str] = ..., rule: _Optional[str] = ..., subject: _Optional[str] = ..., detail: _Optional[str] = ..., acknowledged_by: _Optional[str] = ..., acknowledged_at: _Optional[str] = ..., note: _Optional[str] = ...) -> None: ...

class ListAlertsResponse(_message.Message):
    __slots__ = ("alerts", "unacknowledged")
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    UNACKNOWLEDGED_FIELD_NUMBER: _ClassVar[int]
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    unacknowledged: int
    def __init__(self, alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ..., unacknowledged: _Optional[int] = ...) -> None: ...

class AcknowledgeAlertRequest(_message.Message):
    __slots__ = ("id", "note")
    ID_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    id: int
    note: str
    def __init__(self, id: _Optional[int] = ..., note: _Optional[str] = ...) -> None: ...

class AcknowledgeAlertResponse(_message.Message):
    __slots__ = ("alert",)
    ALERT_FIELD_NUMBER: _ClassVar[int]
    alert: Alert
    def __init__(self, alert: _Optional[_Union[Alert, _Mapping]] = ...) -> None: ...
