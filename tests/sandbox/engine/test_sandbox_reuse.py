"""What the sandbox reuses across requests: client connections, one watchdog thread, guard acceptances."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import duckdb
import pytest

from sandbox.client import SandboxClient, SandboxProcess
from sandbox.engine import guard
from sandbox.engine.watchdog import Watchdog
from sandbox.errors import PlanRejectedError
from sandbox.protocol.messages import ExecuteRequest, ExecuteResult
from tests.sandbox.process.test_sandbox_process import EXTRA, PLAN, _setup

pytestmark = pytest.mark.integration

SLOW = "SELECT count(*) FROM range(100000000) a, range(100) b WHERE a.range * b.range % 7 = 3"


def test_client_reuses_one_connection_and_survives_a_restart(tmp_path: Path) -> None:
    """Sequential calls share one pooled connection, unless it idled too long; after the sandbox is killed
    and restarted, the stale connection is dropped and the next call succeeds (not a failed, charged
    request)."""
    proc = SandboxProcess.start(_setup(tmp_path), tmp_path / "s.sock", extra_args=EXTRA)
    try:
        client = proc.client()
        for i in range(3):
            assert isinstance(client.execute(ExecuteRequest(f"r{i}", PLAN, 1.0), timeout_s=30), ExecuteResult)
        assert len(client._idle) == 1
        first = client._idle[0][1]
        client.MAX_IDLE_S = 0.0  # older than this: closed, never reused
        client.health()
        assert client._idle[0][1] is not first and first.fileno() == -1
        client.MAX_IDLE_S = SandboxClient.MAX_IDLE_S
        first = client._idle[0][1]
        assert proc.proc is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.proc.wait(10)
        proc.restart()
        assert client.health().pid == proc.pid
        assert client._idle and client._idle[0][1] is not first
    finally:
        proc.stop()


def test_client_connections_are_not_shared_between_concurrent_calls(tmp_path: Path) -> None:
    """Concurrent calls each get their own connection; all answers arrive intact."""
    proc = SandboxProcess.start(_setup(tmp_path), tmp_path / "s.sock", extra_args=EXTRA)
    try:
        client = proc.client()
        results: list[object] = []

        def work(n: int) -> None:
            for i in range(5):
                results.append(client.execute(ExecuteRequest(f"t{n}-{i}", PLAN, 1.0), timeout_s=30))

        threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 30 and all(isinstance(r, ExecuteResult) for r in results)
        assert 1 <= len(client._idle) <= client.MAX_IDLE
    finally:
        proc.stop()


def test_watchdog_interrupts_only_statements_past_their_deadline() -> None:
    """A slow statement is interrupted at its deadline; quick ones under the same watchdog are not."""
    con = duckdb.connect(config={"threads": 1})
    dog = Watchdog()
    try:
        for _ in range(20):
            cur = con.cursor()
            with dog.watch(cur, 5.0):
                assert cur.execute("SELECT 42").fetchall() == [(42,)]
            cur.close()
        cur = con.cursor()
        t0 = time.monotonic()
        with pytest.raises(duckdb.InterruptException), dog.watch(cur, 0.05):
            cur.execute(SLOW).fetchall()
        assert time.monotonic() - t0 < 2.0
        cur.close()
        threads = [t for t in threading.enumerate() if t.name == "sandbox-watchdog"]
        assert len(threads) >= 1
    finally:
        con.close()


def test_guard_parses_an_accepted_text_once_and_refuses_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """An accepted SQL text is not parsed again; a refused one is parsed and refused on every call."""
    con = duckdb.connect()
    con.execute("CREATE TABLE t (x BIGINT)")
    calls: list[str] = []
    real = guard.single_select_node

    def counting(c: duckdb.DuckDBPyConnection, sql: str, refuse: object) -> object:
        calls.append(sql)
        return real(c, sql, refuse)  # type: ignore[arg-type]

    monkeypatch.setattr(guard, "single_select_node", counting)
    ok = "SELECT count(*) FROM t -- reuse test"
    for _ in range(3):
        guard.check_select(con, ok, {"t"})
    assert calls == [ok]
    with pytest.raises(PlanRejectedError):
        guard.check_select(con, ok, {"other"})  # another table set is another key
    bad = "SELECT * FROM read_csv('/etc/passwd')"
    for _ in range(2):
        with pytest.raises(PlanRejectedError):
            guard.check_select(con, bad, {"t"})
    assert calls.count(bad) == 2
    con.close()
