"""The real sandbox process over its socket: lock-down, describe, execute, bad frames, shutdown."""

from __future__ import annotations

import os
import signal
import socket
import stat
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from sandbox.client import (
    SandboxClient,
    SandboxConnectionError,
    SandboxProcess,
    SandboxStartError,
)
from sandbox.protocol.messages import (
    MAX_FRAME_BYTES,
    Aggregate,
    AggregateKind,
    CatalogInfo,
    Column,
    ErrorReply,
    ExecuteRequest,
    ExecuteResult,
    GroupKey,
    HealthReply,
    HealthRequest,
    OutputColumn,
    QueryPlan,
    decode_body,
    encode_frame,
)

pytestmark = pytest.mark.integration

CATALOG = """
schema = "privacy_gateway.catalog.v1"
data_dir = "data"

[datasets.reg]
privacy_unit = "pid"

[datasets.reg.tables.people]
file = "people.parquet"
max_rows_per_unit = 1

[datasets.reg.tables.people.columns]
pid    = { type = "int64", grade = "identifier" }
region = { type = "string", grade = "public", domain = ["a", "b", "c"] }
income = { type = "int64", grade = "sensitive", lower = 0, upper = 100 }
"""
# 3 GiB address space and 1 GiB DuckDB memory: the process must work under a tight RLIMIT_AS.
EXTRA = ["--address-space-bytes", str(3 * 1024**3), "--memory-limit", "1GiB", "--threads", "1"]


def _setup(d: Path) -> Path:
    (d / "data").mkdir()
    con = duckdb.connect()
    con.execute(
        "COPY (SELECT range AS pid, CASE WHEN range % 2 = 0 THEN 'a' ELSE 'b' END AS region, "
        f"(range % 50)::BIGINT AS income FROM range(1000)) TO '{d / 'data' / 'people.parquet'}'"
    )
    con.close()
    (d / "catalog.toml").write_text(CATALOG)
    return d / "catalog.toml"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    d = tmp_path_factory.mktemp("proc")
    proc = SandboxProcess.start(_setup(d), d / "sb.sock", extra_args=EXTRA)
    yield proc
    proc.stop()


PLAN = QueryPlan(
    "reg", "people",
    (Aggregate(AggregateKind.COUNT), Aggregate(AggregateKind.SUM, Column("income"), 1.0, 0.0, 100.0)),
    (OutputColumn("region", group_index=0), OutputColumn("n", aggregate_index=0)),
    group_by=(GroupKey("region", Column("region"), ("a", "b", "c")),),
)


def _raw_call(sock: socket.socket, payload: bytes) -> object:
    sock.sendall(payload)
    (n,) = struct.unpack(">I", sock.recv(4, socket.MSG_WAITALL))
    return decode_body(sock.recv(n, socket.MSG_WAITALL))


def test_health_shows_locked_down(sandbox: SandboxProcess) -> None:
    """The served process reports locked_down, its own pid, its gateway's pid (this process, alive: not
    orphaned), RLIMIT_AS and a 0600 socket."""
    h = sandbox.client().health()
    assert h == HealthReply(serving=True, locked_down=True, pid=sandbox.pid, parent_pid=os.getpid(), orphaned=False)
    assert stat.S_IMODE(os.stat(sandbox.socket_path).st_mode) == 0o600
    limits = Path(f"/proc/{sandbox.pid}/limits").read_text()
    line = next(x for x in limits.splitlines() if x.startswith("Max address space"))
    assert str(3 * 1024**3) in line


def test_describe(sandbox: SandboxProcess) -> None:
    """describe() returns the public catalog with a data version."""
    info = sandbox.client().describe()
    assert isinstance(info, CatalogInfo)
    ds = info.dataset("reg")
    assert ds is not None and len(ds.version) == 16 and ds.privacy_unit == "pid"
    t = ds.table("people")
    assert t is not None and t.max_rows_per_unit == 1
    col = t.column("region")
    assert col is not None and col.domain == ("a", "b", "c")


def test_execute_over_socket(sandbox: SandboxProcess) -> None:
    """A grouped plan is answered with noisy rows for every domain value.

    Count scale 2 (K=1, eps 0.5): P(|noise| >= 40) <= 2 exp(-20) per cell; false failure < 1e-8.
    """
    r = sandbox.client().execute(ExecuteRequest("r1", PLAN, 1.0), timeout_s=30)
    assert isinstance(r, ExecuteResult)
    assert [row.keys for row in r.rows] == [("a",), ("b",), ("c",)]
    truth = {"a": 500, "b": 500, "c": 0}
    count_cost = r.costs[0]
    for row in r.rows:
        assert abs(row.values[0].value - truth[str(row.keys[0])]) <= 20 * count_cost.scale
    assert sum(c.epsilon for c in r.costs) <= 1.0


def test_rejection_over_socket(sandbox: SandboxProcess) -> None:
    """A plan on an identifier column comes back as ErrorReply('rejected')."""
    plan = QueryPlan("reg", "people", (Aggregate(AggregateKind.COUNT_COLUMN, Column("pid")),), ())
    r = sandbox.client().execute(ExecuteRequest("r2", plan, 1.0))
    assert isinstance(r, ErrorReply) and r.kind == "rejected"


def test_malformed_frames_get_bad_request_and_server_keeps_serving(
    sandbox: SandboxProcess,
) -> None:
    """Garbage, unknown types and NaN get bad_request on the same connection, which stays usable."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sandbox.socket_path))
        for body in (b"not json", b'{"type":"sql","q":"SELECT 1"}', b'{"type":"health","x":NaN}'):
            reply = _raw_call(s, struct.pack(">I", len(body)) + body)
            assert isinstance(reply, ErrorReply) and reply.kind == "bad_request"
        assert isinstance(_raw_call(s, encode_frame(HealthRequest())), HealthReply)
        reply = _raw_call(s, encode_frame(ErrorReply("failed")))  # a reply type as a request
        assert isinstance(reply, ErrorReply) and reply.kind == "bad_request"
    assert sandbox.client().health().serving


def test_oversized_frame_closes_connection(sandbox: SandboxProcess) -> None:
    """A length above MAX_FRAME_BYTES gets bad_request and the connection is closed."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(sandbox.socket_path))
        reply = _raw_call(s, struct.pack(">I", MAX_FRAME_BYTES + 1))
        assert isinstance(reply, ErrorReply) and reply.kind == "bad_request"
        assert s.recv(1) == b""
    assert sandbox.alive


def test_concurrent_clients(sandbox: SandboxProcess) -> None:
    """Eight threads sharing one client all get answers (each request with its own id: the sandbox refuses a
    request id it has already executed, whether or not the dataset has a cap)."""
    client = sandbox.client()
    results: list[object] = []

    def work(t: int) -> None:
        for i in range(5):
            results.append(client.execute(ExecuteRequest(f"c{t}-{i}", PLAN, 1.0)))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 40 and all(isinstance(r, ExecuteResult) for r in results)


def test_unreachable_socket_raises_connection_error(tmp_path: Path) -> None:
    """A client for a missing socket raises SandboxConnectionError (an OSError)."""
    with pytest.raises(SandboxConnectionError):
        SandboxClient(tmp_path / "none.sock", 1.0).health()
    assert issubclass(SandboxConnectionError, OSError)


def test_bad_catalog_fails_start_with_stderr(tmp_path: Path) -> None:
    """A child that exits during startup raises SandboxStartError carrying its stderr."""
    (tmp_path / "c.toml").write_text(CATALOG.replace("max_rows_per_unit = 1\n", ""))
    with pytest.raises(SandboxStartError, match="max_rows_per_unit"):
        SandboxProcess.start(tmp_path / "c.toml", tmp_path / "x.sock", ready_timeout_s=60)
    assert not (tmp_path / "x.sock").exists()


def test_sigterm_removes_socket_and_restart_replaces_stale(tmp_path: Path) -> None:
    """SIGTERM shuts down cleanly and removes the socket; after SIGKILL, restart reuses the path."""
    sock = tmp_path / "s.sock"
    proc = SandboxProcess.start(_setup(tmp_path), sock)
    try:
        assert proc.client().health().locked_down
        assert proc.proc is not None
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.proc.wait(10) == 0
        assert not sock.exists()
        proc.restart()
        first = proc.pid
        os.kill(first, signal.SIGKILL)
        proc.proc.wait(10)
        assert sock.exists()  # stale socket left behind by the killed process
        t0 = time.monotonic()
        proc.restart()
        assert proc.pid != first and proc.client().health().pid == proc.pid
        assert time.monotonic() - t0 < 60
    finally:
        proc.stop()
    assert not proc.alive and not sock.exists()


def test_client_deadline_on_silent_server(tmp_path: Path) -> None:
    """A server that accepts but never answers makes the client raise within its deadline."""
    path = tmp_path / "silent.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(1)
    try:
        t0 = time.monotonic()
        with pytest.raises(SandboxConnectionError):
            SandboxClient(path, 0.3).health()
        assert time.monotonic() - t0 < 2.0
    finally:
        srv.close()
