"""The sandbox is its own last line of defence: plans sent straight to its socket cannot read files."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.rpc.server import Gateway
from sandbox.client import SandboxClient
from sandbox.protocol.messages import (
    Aggregate,
    AggregateKind,
    Binary,
    Column,
    ErrorReply,
    ExecuteRequest,
    ExecuteResult,
    Literal,
    OutputColumn,
    QueryPlan,
)
from tests.helpers import Env

pytestmark = pytest.mark.integration


def _plan(table: str, where: Binary | None = None, column: str | None = None) -> QueryPlan:
    kind = AggregateKind.COUNT if column is None else AggregateKind.SUM
    return QueryPlan(dataset="registry", table=table, aggregates=(Aggregate(kind, column),),
                     outputs=(OutputColumn("n", aggregate_index=0),), where=where)


@pytest.mark.parametrize("table", [
    "read_csv('/etc/passwd')", "/etc/passwd", "'/etc/passwd'", "read_text('/etc/hostname')",
    "residents; COPY residents TO '/tmp/x.csv'", "duckdb_settings()", "registry__residents",
])
def test_plans_naming_files_or_functions_are_rejected(env: Env, gateway: Gateway, table: str) -> None:
    """A plan whose table is a file, a table function or SQL text is refused before any data is read."""
    client = SandboxClient(env.settings.sandbox_socket)
    reply = client.execute(ExecuteRequest("direct", _plan(table), 1.0))
    assert isinstance(reply, ErrorReply) and reply.kind == "rejected"


@pytest.mark.parametrize("column", ['income") FROM read_csv(\'/etc/passwd\') --', "id_number", "person_id"])
def test_injected_or_identifier_columns_are_rejected(env: Env, gateway: Gateway, column: str) -> None:
    """Column names are catalog names only: injection attempts and identifiers are refused."""
    client = SandboxClient(env.settings.sandbox_socket)
    where = Binary("=", Column(column), Literal(1))
    reply = client.execute(ExecuteRequest("direct", _plan("residents", where=where), 1.0))
    assert isinstance(reply, ErrorReply) and reply.kind == "rejected"


def test_string_literals_cannot_escape(env: Env, gateway: Gateway) -> None:
    """A literal full of quotes and statement separators is data, not SQL: the plan runs normally."""
    client = SandboxClient(env.settings.sandbox_socket)
    evil = "x'; COPY residents TO '/tmp/leak.csv'; --"
    reply = client.execute(ExecuteRequest(
        "direct", _plan("residents", where=Binary("=", Column("sex"), Literal(evil))), 1.0))
    assert isinstance(reply, ExecuteResult) and len(reply.rows) == 1
    assert not Path("/tmp/leak.csv").exists()
