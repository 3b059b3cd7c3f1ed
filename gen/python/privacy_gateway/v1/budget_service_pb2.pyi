from privacy_gateway.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetPrivacyBudgetRequest(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    def __init__(self, dataset: _Optional[str] = ...) -> None: ...

class GetPrivacyBudgetResponse(_message.Message):
    __slots__ = ("consumer", "grants")
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    consumer: str
    grants: _containers.RepeatedCompositeFieldContainer[_common_pb2.BudgetStatus]
    def __init__(self, consumer: _Optional[str] = ..., grants: _Optional[_Iterable[_Union[_common_pb2.BudgetStatus, _Mapping]]] = ...) -> None: ...
