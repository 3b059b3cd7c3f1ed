from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class VerificationResult(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    VERIFICATION_RESULT_UNSPECIFIED: _ClassVar[VerificationResult]
    VERIFICATION_RESULT_MATCH: _ClassVar[VerificationResult]
    VERIFICATION_RESULT_NO_MATCH: _ClassVar[VerificationResult]
    VERIFICATION_RESULT_NOT_FOUND: _ClassVar[VerificationResult]

class ClaimStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLAIM_STATUS_OK: _ClassVar[ClaimStatus]
    CLAIM_STATUS_INVALID_SUBJECT: _ClassVar[ClaimStatus]
    CLAIM_STATUS_INVALID_PARAMETER: _ClassVar[ClaimStatus]
    CLAIM_STATUS_CASE_REFERENCE_REQUIRED: _ClassVar[ClaimStatus]
    CLAIM_STATUS_CAP_EXHAUSTED: _ClassVar[ClaimStatus]
VERIFICATION_RESULT_UNSPECIFIED: VerificationResult
VERIFICATION_RESULT_MATCH: VerificationResult
VERIFICATION_RESULT_NO_MATCH: VerificationResult
VERIFICATION_RESULT_NOT_FOUND: VerificationResult
CLAIM_STATUS_OK: ClaimStatus
CLAIM_STATUS_INVALID_SUBJECT: ClaimStatus
CLAIM_STATUS_INVALID_PARAMETER: ClaimStatus
CLAIM_STATUS_CASE_REFERENCE_REQUIRED: ClaimStatus
CLAIM_STATUS_CAP_EXHAUSTED: ClaimStatus

class ParamValue(_message.Message):
    __slots__ = ("int64_value", "double_value", "string_value", "bool_value")
    INT64_VALUE_FIELD_NUMBER: _ClassVar[int]
    DOUBLE_VALUE_FIELD_NUMBER: _ClassVar[int]
    STRING_VALUE_FIELD_NUMBER: _ClassVar[int]
    BOOL_VALUE_FIELD_NUMBER: _ClassVar[int]
    int64_value: int
    double_value: float
    string_value: str
    bool_value: bool
    def __init__(self, int64_value: _Optional[int] = ..., double_value: _Optional[float] = ..., string_value: _Optional[str] = ..., bool_value: _Optional[bool] = ...) -> None: ...

class TemplateParameter(_message.Message):
    __slots__ = ("name", "type", "allowed", "ladder", "max_length", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    LADDER_FIELD_NUMBER: _ClassVar[int]
    MAX_LENGTH_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    allowed: _containers.RepeatedCompositeFieldContainer[ParamValue]
    ladder: _containers.RepeatedCompositeFieldContainer[ParamValue]
    max_length: int
    description: str
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., allowed: _Optional[_Iterable[_Union[ParamValue, _Mapping]]] = ..., ladder: _Optional[_Iterable[_Union[ParamValue, _Mapping]]] = ..., max_length: _Optional[int] = ..., description: _Optional[str] = ...) -> None: ...

class Template(_message.Message):
    __slots__ = ("dataset", "name", "description", "subject_format", "parameters", "band_labels", "not_found_as_no_match", "requires_case_reference", "purposes", "max_checks_per_period", "max_checks_per_subject_per_period", "period")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    BAND_LABELS_FIELD_NUMBER: _ClassVar[int]
    NOT_FOUND_AS_NO_MATCH_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_CASE_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    PURPOSES_FIELD_NUMBER: _ClassVar[int]
    MAX_CHECKS_PER_PERIOD_FIELD_NUMBER: _ClassVar[int]
    MAX_CHECKS_PER_SUBJECT_PER_PERIOD_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    name: str
    description: str
    subject_format: str
    parameters: _containers.RepeatedCompositeFieldContainer[TemplateParameter]
    band_labels: _containers.RepeatedScalarFieldContainer[str]
    not_found_as_no_match: bool
    requires_case_reference: bool
    purposes: _containers.RepeatedScalarFieldContainer[str]
    max_checks_per_period: int
    max_checks_per_subject_per_period: int
    period: str
    def __init__(self, dataset: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., subject_format: _Optional[str] = ..., parameters: _Optional[_Iterable[_Union[TemplateParameter, _Mapping]]] = ..., band_labels: _Optional[_Iterable[str]] = ..., not_found_as_no_match: _Optional[bool] = ..., requires_case_reference: _Optional[bool] = ..., purposes: _Optional[_Iterable[str]] = ..., max_checks_per_period: _Optional[int] = ..., max_checks_per_subject_per_period: _Optional[int] = ..., period: _Optional[str] = ...) -> None: ...

class ListTemplatesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListTemplatesResponse(_message.Message):
    __slots__ = ("templates", "receipt_public_key_pem", "receipt_key_id")
    TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_PUBLIC_KEY_PEM_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    templates: _containers.RepeatedCompositeFieldContainer[Template]
    receipt_public_key_pem: str
    receipt_key_id: str
    def __init__(self, templates: _Optional[_Iterable[_Union[Template, _Mapping]]] = ..., receipt_public_key_pem: _Optional[str] = ..., receipt_key_id: _Optional[str] = ...) -> None: ...

class VerificationReceipt(_message.Message):
    __slots__ = ("payload", "signature", "key_id", "leaf_index", "tree_size", "audit_path")
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    LEAF_INDEX_FIELD_NUMBER: _ClassVar[int]
    TREE_SIZE_FIELD_NUMBER: _ClassVar[int]
    AUDIT_PATH_FIELD_NUMBER: _ClassVar[int]
    payload: bytes
    signature: bytes
    key_id: str
    leaf_index: int
    tree_size: int
    audit_path: bytes
    def __init__(self, payload: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., key_id: _Optional[str] = ..., leaf_index: _Optional[int] = ..., tree_size: _Optional[int] = ..., audit_path: _Optional[bytes] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ("dataset", "template", "purpose", "subject", "parameters", "case_reference")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ParamValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ParamValue, _Mapping]] = ...) -> None: ...
    DATASET_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    CASE_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    template: str
    purpose: str
    subject: str
    parameters: _containers.MessageMap[str, ParamValue]
    case_reference: str
    def __init__(self, dataset: _Optional[str] = ..., template: _Optional[str] = ..., purpose: _Optional[str] = ..., subject: _Optional[str] = ..., parameters: _Optional[_Mapping[str, ParamValue]] = ..., case_reference: _Optional[str] = ...) -> None: ...

class VerifyResponse(_message.Message):
    __slots__ = ("result", "band", "receipt")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    BAND_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    result: VerificationResult
    band: str
    receipt: VerificationReceipt
    def __init__(self, result: _Optional[_Union[VerificationResult, str]] = ..., band: _Optional[str] = ..., receipt: _Optional[_Union[VerificationReceipt, _Mapping]] = ...) -> None: ...

class Claim(_message.Message):
    __slots__ = ("subject", "parameters", "case_reference")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ParamValue
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ParamValue, _Mapping]] = ...) -> None: ...
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    CASE_REFERENCE_FIELD_NUMBER: _ClassVar[int]
    subject: str
    parameters: _containers.MessageMap[str, ParamValue]
    case_reference: str
    def __init__(self, subject: _Optional[str] = ..., parameters: _Optional[_Mapping[str, ParamValue]] = ..., case_reference: _Optional[str] = ...) -> None: ...

class VerifyBatchRequest(_message.Message):
    __slots__ = ("dataset", "template", "purpose", "claims")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    PURPOSE_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    template: str
    purpose: str
    claims: _containers.RepeatedCompositeFieldContainer[Claim]
    def __init__(self, dataset: _Optional[str] = ..., template: _Optional[str] = ..., purpose: _Optional[str] = ..., claims: _Optional[_Iterable[_Union[Claim, _Mapping]]] = ...) -> None: ...

class ClaimResult(_message.Message):
    __slots__ = ("index", "status", "status_message", "result", "band", "receipt")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    BAND_FIELD_NUMBER: _ClassVar[int]
    RECEIPT_FIELD_NUMBER: _ClassVar[int]
    index: int
    status: ClaimStatus
    status_message: str
    result: VerificationResult
    band: str
    receipt: VerificationReceipt
    def __init__(self, index: _Optional[int] = ..., status: _Optional[_Union[ClaimStatus, str]] = ..., status_message: _Optional[str] = ..., result: _Optional[_Union[VerificationResult, str]] = ..., band: _Optional[str] = ..., receipt: _Optional[_Union[VerificationReceipt, _Mapping]] = ...) -> None: ...

class VerifyBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ClaimResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ClaimResult, _Mapping]]] = ...) -> None: ...
