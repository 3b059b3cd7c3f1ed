"""The base types of the declared wire schema, shared by every protocol module.

Every type that crosses the boundary is a frozen `msgspec.Struct` declared in `sandbox.protocol`; the
schema is the set of those declarations (field names, types, tags), and `sandbox.protocol.wire` encodes
and decodes them with msgspec, checking every field against its declared type. Nothing is hand-coded.

* `Strict`: refuses unknown fields when decoded (a frame cannot smuggle a key the schema does not name).
* `Envelope`: a top-level message, tagged by its `type` field (`sandbox.protocol.messages` lists them).
"""

from __future__ import annotations

import msgspec

__all__ = ["MAX_FRAME_BYTES", "PROTOCOL_VERSION", "Envelope", "ProtocolError", "Strict"]

PROTOCOL_VERSION = 2
MAX_FRAME_BYTES = 64 * 1024 * 1024


class ProtocolError(ValueError):
    """A frame or message is malformed."""


class Strict(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A frozen record of the wire schema that refuses unknown fields when decoded."""


class Envelope(Strict, frozen=True, tag_field="type"):
    """A top-level message of the boundary; its class's `tag` is its `type` on the wire."""
