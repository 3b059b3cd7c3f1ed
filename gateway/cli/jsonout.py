"""Plain JSON for the CLI's ``--json``: a response message as a JSON object a script can use directly.

The shape rule, the same for every command that prints a response message:

* keys are the field names of the ``.proto`` (snake_case);
* every field is present: fields without presence at their zero value (``0``, ``""``, ``false``, ``[]``,
  ``{}``), a ``optional`` scalar or a message field that is not set as ``null``; of a ``oneof`` with several
  members only the member that is set appears (its key says which one);
* 64-bit integers (``int64``, ``uint64``, ``sint64``, ``fixed64``, ``sfixed64``) are JSON numbers, exact at any
  size (protobuf's own JSON mapping quotes them), also in repeated fields, nested messages and map values;
* the rest is protobuf's JSON mapping: enums by name, ``bytes`` as base64, ``NaN`` and infinities of a double as
  the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``, map keys as strings, and the well-known types
  (``Timestamp``, ``Duration``, ...) in their protobuf strings; ``Int64Value``/``UInt64Value`` as numbers.

Only protobuf is imported, and only when a message is converted, so ``pgw --help`` stays light.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from google.protobuf.descriptor import Descriptor, FieldDescriptor
    from google.protobuf.message import Message

__all__ = ["message_to_json", "message_to_json_obj"]

_INT64_WRAPPERS = frozenset({"google.protobuf.Int64Value", "google.protobuf.UInt64Value"})


def message_to_json_obj(message: Message) -> Any:
    """``message`` as a JSON-ready value following the module's shape rule: a dict, except for a well-known
    type given on its own (a ``Timestamp`` is its string, an ``Int64Value`` its number)."""
    from google.protobuf import json_format

    raw = json_format.MessageToDict(message, always_print_fields_with_no_presence=True,
                                    preserving_proto_field_name=True)
    # the upb runtime's descriptor class is the one the stubs call google.protobuf.descriptor.Descriptor
    return _of_type(cast("Descriptor", message.DESCRIPTOR), raw)


def message_to_json(message: Message) -> str:
    """``message`` as indented JSON text (UTF-8 characters kept as they are)."""
    return json.dumps(message_to_json_obj(message), indent=2, ensure_ascii=False)


def _message(desc: Descriptor, raw: dict[str, Any]) -> dict[str, Any]:
    """The fields of one message in declaration order, every field present, 64-bit integers unquoted."""
    out: dict[str, Any] = {}
    for field in desc.fields:
        if field.name in raw:
            out[field.name] = _field(field, raw[field.name])
        elif field.has_presence and not _in_real_oneof(field):
            out[field.name] = None
    return out


def _in_real_oneof(field: FieldDescriptor) -> bool:
    """Whether the field is one choice among several of a ``oneof`` (a proto3 ``optional`` field sits alone in
    a synthetic one)."""
    oneof = field.containing_oneof
    return oneof is not None and len(oneof.fields) > 1


def _field(field: FieldDescriptor, value: Any) -> Any:
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        value_field = entry.fields_by_name["value"]
        return {key: _value(value_field, item) for key, item in value.items()}
    if field.is_repeated:
        return [_value(field, item) for item in value]
    return _value(field, value)


def _value(field: FieldDescriptor, value: Any) -> Any:
    from google.protobuf.descriptor import FieldDescriptor

    if field.cpp_type in (FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64):
        return int(value)
    if field.message_type is not None:
        return _of_type(field.message_type, value)
    return value


def _of_type(desc: Descriptor, value: Any) -> Any:
    """A message's protobuf JSON value in the plain shape."""
    if desc.full_name in _INT64_WRAPPERS:
        return int(value)
    if desc.file.name.startswith("google/protobuf/"):
        return value  # a well-known type: protobuf's JSON mapping as it is
    return _message(desc, value)
