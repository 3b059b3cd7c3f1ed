"""The frame format: a 4-byte big-endian length, then one message as UTF-8 JSON (msgspec, strict).

Encoding and decoding follow the declared schema (`sandbox.protocol.base`): a message is one of the
`Envelope` types of `sandbox.protocol.messages`, tagged by its `type` field. Decoding refuses, with
`ProtocolError`, anything the schema does not declare: an unknown message type or plan node, an unknown
field, a missing required field, a value of the wrong type (a boolean or string where a number is
declared, a float where an integer is), a non-finite number, a number out of range, invalid UTF-8, and
nesting deeper than the interpreter's recursion limit. A message's own checks (`__post_init__`, e.g. an
aggregate's bounds) run while decoding and are refused the same way.

JSON has no NaN or infinity (msgspec writes them as null), so the records whose floats are not otherwise
checked refuse non-finite numbers when they are built (`Literal`, `GroupKey.domain`, `NoisyValue`,
`ReleaseRow.keys`, the model estimates): a non-finite number never turns into a null on the other side.
"""

from __future__ import annotations

import struct
from typing import Any

import msgspec

from sandbox.protocol.base import MAX_FRAME_BYTES, Envelope, ProtocolError

__all__ = ["HEADER", "Decoder", "encode_body", "encode_frame", "frame_length"]

HEADER = struct.Struct(">I")


def _builtin_number(obj: Any) -> Any:
    """Encode subclasses of int and float (e.g. numpy.float64) as the plain numbers they are."""
    if isinstance(obj, float):
        return float(obj)
    if isinstance(obj, int):
        return int(obj)
    raise NotImplementedError(f"{type(obj).__name__} cannot cross the boundary")  # msgspec enc_hook contract: refuse


_ENCODER = msgspec.json.Encoder(enc_hook=_builtin_number)


def encode_body(msg: Envelope) -> bytes:
    """The JSON body of `msg` (without the length prefix)."""
    return _ENCODER.encode(msg)


def encode_frame(msg: Envelope) -> bytes:
    """Length-prefixed JSON frame for a message.

    Raises:
        ProtocolError: the body exceeds `MAX_FRAME_BYTES`.
    """
    body = _ENCODER.encode(msg)
    if len(body) > MAX_FRAME_BYTES:
        raise ProtocolError("frame too large")
    return HEADER.pack(len(body)) + body


def frame_length(header: bytes) -> int:
    """The body length a 4-byte frame header announces."""
    (length,) = HEADER.unpack(header)
    return int(length)


class Decoder:
    """Strict decoder of frame bodies into one union of message types (`sandbox.protocol.messages`)."""

    def __init__(self, union: Any) -> None:
        """`union`: the message types this side accepts (e.g. the requests, on the sandbox's side)."""
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(union)

    def decode(self, body: bytes) -> Any:
        """Decode and validate one frame body.

        Raises:
            ProtocolError: the body is not a valid message of the union (see the module docstring).
        """
        try:
            return self._decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise ProtocolError(f"invalid message: {exc}") from exc
        except msgspec.DecodeError as exc:
            raise ProtocolError(f"frame is not valid JSON: {exc}") from exc
        except RecursionError as exc:
            raise ProtocolError("message nested too deeply") from exc
