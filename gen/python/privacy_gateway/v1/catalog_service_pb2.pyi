from privacy_gateway.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ListDatasetsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets",)
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    def __init__(self, datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ...) -> None: ...

class GetDatasetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class Dataset(_message.Message):
    __slots__ = ("name", "description", "owner", "privacy_unit", "tables", "version", "purposes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_UNIT_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PURPOSES_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    owner: str
    privacy_unit: str
    tables: _containers.RepeatedCompositeFieldContainer[Table]
    version: str
    purposes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., owner: _Optional[str] = ..., privacy_unit: _Optional[str] = ..., tables: _Optional[_Iterable[_Union[Table, _Mapping]]] = ..., version: _Optional[str] = ..., purposes: _Optional[_Iterable[str]] = ...) -> None: ...

class Table(_message.Message):
    __slots__ = ("name", "max_rows_per_unit", "columns")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_PER_UNIT_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    name: str
    max_rows_per_unit: int
    columns: _containers.RepeatedCompositeFieldContainer[ColumnSchema]
    def __init__(self, name: _Optional[str] = ..., max_rows_per_unit: _Optional[int] = ..., columns: _Optional[_Iterable[_Union[ColumnSchema, _Mapping]]] = ...) -> None: ...

class ColumnSchema(_message.Message):
    __slots__ = ("name", "type", "grade", "has_bounds", "lower", "upper", "domain", "description", "groupable", "summable")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    GRADE_FIELD_NUMBER: _ClassVar[int]
    HAS_BOUNDS_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    DOMAIN_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    GROUPABLE_FIELD_NUMBER: _ClassVar[int]
    SUMMABLE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: _common_pb2.ColumnType
    grade: str
    has_bounds: bool
    lower: float
    upper: float
    domain: _containers.RepeatedScalarFieldContainer[str]
    description: str
    groupable: bool
    summable: bool
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[_common_pb2.ColumnType, str]] = ..., grade: _Optional[str] = ..., has_bounds: _Optional[bool] = ..., lower: _Optional[float] = ..., upper: _Optional[float] = ..., domain: _Optional[_Iterable[str]] = ..., description: _Optional[str] = ..., groupable: _Optional[bool] = ..., summable: _Optional[bool] = ...) -> None: ...
