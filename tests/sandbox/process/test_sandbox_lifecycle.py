"""The sandbox's tie to its gateway, the reclaim of its socket, and its log lines in the gateway's log.

Real processes and sockets: a sandbox dies with the process that started it (kernel parent-death signal,
or the parent watchdog alone); a starting gateway refuses a socket a live gateway's sandbox serves on and
stops an orphan that answers; every stderr line of the sandbox reaches the gateway's JSON log on logger
`sandbox`, a failure after touching data with its request id and without the exception's text.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from gateway.release.logs import JsonFormatter
from sandbox.catalog import load_catalog
from sandbox.client import SandboxClient, SandboxProcess, SandboxStartError, reclaim_socket
from sandbox.engine.engine import Engine
from sandbox.engine.limits import Limits
from sandbox.process.lifecycle import EXIT_ORPHANED, ParentTie, ShutdownReply, ShutdownRequest
from sandbox.process.logformat import parse_line, safe_exception
from sandbox.protocol.messages import (
    Aggregate,
    AggregateKind,
    Binary,
    Column,
    ErrorReply,
    ExecuteRequest,
    Expr,
    Literal,
    QueryPlan,
)
from sandbox.server import SandboxServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]  # the repository
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
income = { type = "int64", grade = "sensitive", lower = 0, upper = 1000 }
"""


def _catalog(d: Path, rows: int = 1000) -> Path:
    (d / "data").mkdir(exist_ok=True)
    con = duckdb.connect()
    con.execute(f"COPY (SELECT range AS pid, (range % 1000)::BIGINT AS income FROM range({rows})) "
                f"TO '{d / 'data' / 'people.parquet'}'")
    con.close()
    (d / "catalog.toml").write_text(CATALOG)
    return d / "catalog.toml"


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its new parent to reap it holds nothing)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "State:\tZ" in status


def _wait_gone(pid: int, timeout_s: float) -> float:
    t0 = time.monotonic()
    while not _gone(pid):
        assert time.monotonic() - t0 < timeout_s, f"process {pid} still runs after {timeout_s} s"
        time.sleep(0.01)
    return time.monotonic() - t0


# A middle process starts a child tied to it (as the gateway starts the sandbox), prints the child's pid,
# and waits to be killed. `prctl` = 0 disables the kernel's parent-death signal: the watchdog alone acts.
_MIDDLE = textwrap.dedent("""
    import subprocess, sys, os, time
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid()), sys.argv[2]])
    print(child.pid, flush=True)
    time.sleep(600)
""")
_CHILD = textwrap.dedent("""
    import sys, time
    import sandbox.process.lifecycle as lc
    if sys.argv[2] == "0":
        lc._set_parent_death_signal = lambda: False
    tie = lc.tie_to_parent(int(sys.argv[1]))
    assert not tie.orphaned and tie.death_signal == (sys.argv[2] == "1")
    print("tied", flush=True)
    time.sleep(600)
""")


@pytest.mark.parametrize("prctl", ["1", "0"], ids=["death-signal", "watchdog-only"])
def test_a_tied_process_dies_with_its_parent(prctl: str) -> None:
    """SIGKILL the parent: the child is gone at once (parent-death signal) or within the watchdog's poll."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    middle = subprocess.Popen([sys.executable, "-c", _MIDDLE, _CHILD, prctl], stdout=subprocess.PIPE, text=True,
                              env=env)
    try:
        assert middle.stdout is not None
        child = int(middle.stdout.readline())
        assert middle.stdout.readline().strip() == "tied"  # the child has tied itself (however loaded the machine)
        assert not _gone(child)
        middle.kill()
        middle.wait()
        took = _wait_gone(child, 5.0)
        assert took < (0.5 if prctl == "1" else 1.5), took
    finally:
        middle.kill()
        middle.wait()


def test_a_child_whose_parent_is_already_gone_exits_at_once() -> None:
    """A parent pid that is not the actual parent (it died during start-up): exit code EXIT_ORPHANED."""
    code = "import os, sandbox.process.lifecycle as lc; lc.tie_to_parent(os.getpid())"  # never its own parent
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_ORPHANED and "is gone" in proc.stderr


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    d = tmp_path_factory.mktemp("lifecycle")
    return Engine(load_catalog(_catalog(d)), Limits(query_timeout_ms=5000, threads=1))


@pytest.fixture
def served(engine: Engine, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SandboxServer]:
    """An in-process server for `engine`, tied to `request.param` (a ParentTie); it closes and removes its
    socket when it stops serving, as `sandbox.server.serve` does."""
    server = SandboxServer(tmp_path / "s.sock", engine, request.param)

    def run() -> None:
        server.serve_forever(poll_interval=0.05)
        server.close_and_unlink()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    thread.join(10)


@pytest.mark.parametrize("served", [ParentTie(os.getppid())], indirect=True)
def test_a_live_gateways_sandbox_is_never_reclaimed(served: SandboxServer) -> None:
    """Its parent is alive: it reports not orphaned, refuses to shut down, and a new gateway refuses the
    socket naming the pids; a second server on the same path refuses too. It keeps serving."""
    client = SandboxClient(served.socket_path, 5.0)
    health = client.health(fresh=True)
    assert (health.parent_pid, health.orphaned) == (os.getppid(), False)
    assert client.call(ShutdownRequest(), fresh=True) == ShutdownReply(False)
    with pytest.raises(SandboxStartError, match=f"pid {os.getpid()}, started by pid {os.getppid()}"):
        reclaim_socket(served.socket_path, wait_s=3.0)
    with pytest.raises(OSError, match="another server is listening"):
        SandboxServer(served.socket_path, served.engine)
    assert client.health(fresh=True).serving


@pytest.mark.parametrize("served", [ParentTie()], indirect=True)
def test_a_standalone_sandbox_is_never_reclaimed(served: SandboxServer) -> None:
    """Started on its own (no parent named): never orphaned, never stopped by a starting gateway."""
    assert not SandboxClient(served.socket_path).health(fresh=True).orphaned
    with pytest.raises(SandboxStartError, match="started on its own"):
        reclaim_socket(served.socket_path, wait_s=3.0)


@pytest.mark.parametrize("served", [ParentTie(os.getpid())], indirect=True)  # never its own parent: orphaned
def test_an_orphan_is_asked_to_stop_and_its_socket_reclaimed(served: SandboxServer) -> None:
    """An orphan answering on the socket: the new gateway asks it to stop; the path is free afterwards and a
    new server binds it."""
    assert SandboxClient(served.socket_path).health(fresh=True).orphaned
    t0 = time.monotonic()
    reclaim_socket(served.socket_path, wait_s=10.0)
    assert time.monotonic() - t0 < 5.0
    assert not served.socket_path.exists()
    again = SandboxServer(served.socket_path, served.engine)
    again.close_and_unlink()


def test_a_stale_socket_file_is_reclaimed(tmp_path: Path) -> None:
    """A socket file nobody listens on (its sandbox was killed): reclaim returns at once."""
    import socket

    path = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()
    t0 = time.monotonic()
    reclaim_socket(path)
    assert time.monotonic() - t0 < 1.0


def _heavy(depth: int, counter: list[int]) -> Expr:
    if depth == 0:
        counter[0] += 1
        return Binary("+", Column("income"), Literal(counter[0]))
    op = "%" if depth % 2 else "*"
    return Binary(op, _heavy(depth - 1, counter), _heavy(depth - 1, counter))


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """The gateway's JSON log lines (gateway.release.logs.JsonFormatter), as `pgw serve --log-format json`
    writes them."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield out
    root.removeHandler(handler)
    root.setLevel(old)


def _lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(x) for x in out.getvalue().splitlines() if x.strip()]


def test_sandbox_lines_reach_the_gateways_json_log(tmp_path: Path, json_log: io.StringIO) -> None:
    """A plan that times out inside the sandbox after touching data: its stderr line reaches the gateway's
    JSON log on logger `sandbox` at ERROR, with the request id (split from its consumer) and the
    exception's type and code locations, but not the exception's text; start-up lines arrive too."""
    proc = SandboxProcess.start(_catalog(tmp_path, 3_000_000), tmp_path / "s.sock",
                                extra_args=["--query-timeout-ms", "50", "--threads", "1"])
    try:
        plan = QueryPlan("reg", "people", (Aggregate(AggregateKind.COUNT),), (),
                         where=Binary(">", _heavy(9, [0]), Literal(0)))
        reply = proc.client().execute(ExecuteRequest("analyst/req-42", plan, 1.0))
        assert reply == ErrorReply("failed", "")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
                x.get("request_id") == "req-42" for x in _lines(json_log)):
            time.sleep(0.05)
    finally:
        proc.stop()
    lines = [x for x in _lines(json_log) if x["logger"] == "sandbox"]
    failed = [x for x in lines if x.get("request_id") == "req-42"]
    assert len(failed) == 1, lines
    line = failed[0]
    assert line["level"] == "ERROR" and line["consumer"] == "analyst"
    assert str(line["message"]).startswith("request analyst/req-42 failed after touching data [")
    assert "duckdb.InterruptException at sandbox/engine/engine.py:" in str(line["message"])
    assert "Error:" not in str(line["message"])  # DuckDB's text ("INTERRUPT Error: Interrupted!") stays out
    assert any(x["message"] == "loaded reg.people, at most 1 rows per unit" and x["level"] == "INFO"
               for x in lines)
    assert not any("3000000" in str(x["message"]) for x in lines)  # no exact count of private rows


def test_start_up_errors_reach_the_log_and_the_error(tmp_path: Path, json_log: io.StringIO) -> None:
    """A catalog error: the sandbox's plain stderr line is logged (WARNING, logger `sandbox`) and the
    start-up error carries the tail."""
    (tmp_path / "c.toml").write_text(CATALOG.replace("max_rows_per_unit = 1\n", ""))
    with pytest.raises(SandboxStartError, match="max_rows_per_unit"):
        SandboxProcess.start(tmp_path / "c.toml", tmp_path / "x.sock", ready_timeout_s=60)
    lines = [x for x in _lines(json_log) if x["logger"] == "sandbox"]
    assert any("max_rows_per_unit" in str(x["message"]) and x["level"] == "WARNING" for x in lines), lines


def test_log_lines_parse_and_exceptions_keep_no_text() -> None:
    """The reader keeps level, request id and time of JSON lines, the level of text lines, and anything
    else verbatim at WARNING; an exception is rendered without its message."""
    p = parse_line('{"time":1.5,"level":"ERROR","logger":"sandbox.engine.engine","message":"m","request_id":"a/b"}\n')
    assert (p.level, p.message, p.request_id, p.created) == (logging.ERROR, "m", "a/b", 1.5)
    assert parse_line("2026-01-01 10:00:00,000 sandbox INFO hello").level == logging.INFO
    assert parse_line("Fatal Python error: x").level == logging.WARNING
    try:
        try:
            raise ValueError("secret value 12345")
        except ValueError as exc:
            raise RuntimeError("wrapped 12345") from exc
    except RuntimeError as exc:
        text = safe_exception((type(exc), exc, exc.__traceback__))
    assert "12345" not in text and "RuntimeError" in text and "ValueError" in text
    assert "test_sandbox_lifecycle.py:" in text


def test_sigterm_stops_a_tied_sandbox_cleanly(tmp_path: Path) -> None:
    """A tied sandbox still shuts down cleanly on SIGTERM (exit 0, socket removed)."""
    proc = SandboxProcess.start(_catalog(tmp_path), tmp_path / "s.sock")
    assert proc.proc is not None
    assert proc.client().health().parent_pid == os.getpid()
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.proc.wait(10) == 0
    assert not (tmp_path / "s.sock").exists()


def test_a_sandbox_started_from_a_short_lived_thread_outlives_it(tmp_path: Path) -> None:
    """Linux sends the parent-death signal when the forking THREAD exits: a sandbox started (or restarted)
    from a recovery thread that then ends keeps serving, because every sandbox is forked by one
    long-lived thread."""
    box: list[SandboxProcess] = []
    starter = threading.Thread(target=lambda: box.append(SandboxProcess.start(_catalog(tmp_path), tmp_path / "s.sock")))
    starter.start()
    starter.join(120)
    proc = box[0]
    try:
        time.sleep(1.0)
        assert proc.alive and proc.client().health(fresh=True).serving
    finally:
        proc.stop()
