"""The real sandbox process refuses every malformed request frame with ErrorReply('bad_request') and keeps
serving on the same connection: unknown fields and node types, wrong types, non-finite numbers, nesting far
past any limit, and reply types sent as requests. Nothing is accepted silently, nothing crashes it."""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from sandbox.client import SandboxProcess
from sandbox.protocol.messages import (
    Aggregate,
    AggregateKind,
    Column,
    ErrorReply,
    ExecuteRequest,
    ExecuteResult,
    GroupKey,
    HealthReply,
    HealthRequest,
    OutputColumn,
    QueryPlan,
    decode_reply,
    encode_frame,
)
from tests.sandbox.process.test_sandbox_process import EXTRA, _setup

pytestmark = pytest.mark.integration

PLAN = QueryPlan(
    "reg", "people",
    (Aggregate(AggregateKind.COUNT), Aggregate(AggregateKind.SUM, Column("income"), 1.0, 0.0, 100.0)),
    (OutputColumn("region", group_index=0), OutputColumn("n", aggregate_index=0)),
    group_by=(GroupKey("region", Column("region"), ("a", "b", "c")),),
)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    d = tmp_path_factory.mktemp("strict")
    proc = SandboxProcess.start(_setup(d), d / "sb.sock", extra_args=EXTRA)
    yield proc
    proc.stop()


def _call(sock: socket.socket, body: bytes) -> Any:
    sock.sendall(struct.pack(">I", len(body)) + body)
    (n,) = struct.unpack(">I", sock.recv(4, socket.MSG_WAITALL))
    return decode_reply(sock.recv(n, socket.MSG_WAITALL))


def _execute() -> dict[str, Any]:
    body: dict[str, Any] = json.loads(encode_frame(ExecuteRequest("strict", PLAN, 1.0))[4:])
    return body


def _mutated(path: tuple[str | int, ...], value: Any) -> bytes:
    d = _execute()
    node: Any = d
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return json.dumps(d).encode()


DEEP = '{"t":"unary","op":"-","operand":' * 50_000 + '{"t":"col","name":"income"}' + "}" * 50_000

MALFORMED = {
    "unknown field": _mutated(("plan", "exact"), True),
    "unknown field in a node": _mutated(("plan", "group_by", 0, "expr", "sql"), "SELECT 1"),
    "unknown node type": _mutated(("plan", "where"), {"t": "subquery", "sql": "SELECT * FROM people"}),
    "epsilon as a string": _mutated(("epsilon",), "1.0"),
    "request id as a number": _mutated(("request_id",), 7),
    "index as a float": _mutated(("plan", "outputs", 0, "group_index"), 0.0),
    "an index as a boolean": _mutated(("plan", "outputs"), [{"name": "n", "group_index": None,
                                                          "aggregate_index": True}]),
    "huge number": json.dumps(_execute()).replace('"epsilon": 1.0', '"epsilon": 1e999').encode(),
    "NaN": json.dumps(_execute()).replace('"epsilon": 1.0', '"epsilon": NaN').encode(),
    "nesting far past the limit": json.dumps(_execute()).replace('"where": null', f'"where": {DEEP}').encode(),
    "a reply type": encode_frame(ExecuteResult((), (), "v"))[4:],
    "not JSON": b"\x00\x01garbage",
}


def test_malformed_requests_get_bad_request_and_the_connection_stays_usable(sandbox: SandboxProcess) -> None:
    """Each malformed frame gets bad_request; a valid request on the same connection still runs."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(30)
        s.connect(str(sandbox.socket_path))
        for name, body in MALFORMED.items():
            reply = _call(s, body)
            assert isinstance(reply, ErrorReply) and reply.kind == "bad_request", (name, reply)
        assert isinstance(_call(s, encode_frame(HealthRequest())[4:]), HealthReply)
        assert isinstance(_call(s, encode_frame(ExecuteRequest("strict-ok", PLAN, 1.0))[4:]), ExecuteResult)
    assert sandbox.alive
