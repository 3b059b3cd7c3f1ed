"""Replicas on one PostgreSQL database when one of them freezes or the database drops their sessions: the others
keep answering, and no client ever gets INTERNAL.

A replica frozen (SIGSTOP) inside a write transaction holds the one write lock every replica's writes take
(`gateway.storage.pg`); the server ends its silent session after `idle_in_transaction_s` (10 s), so the other
replica answers again within that bound. Frozen past its lease (10 s), its reservations are settled as failed
by the other replica; when it resumes, those requests end ABORTED (final), its broken sessions UNAVAILABLE
with RetryInfo, and it answers again. Sessions ended by the server mid-load (`pg_terminate_backend`) are
UNAVAILABLE with RetryInfo too. Afterwards the ledger and the audit log agree (each charge audited once) and
`pgw audit verify` passes.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator

import grpc
import psycopg
import pytest

from gateway.release.accounting import reconcile
from gateway.storage.pg import WRITE_LOCK, PgDatabase
from pgw_client.errors import status_of
from tests.gateway.budgets.test_replicas_postgres import MEMBERS, Replicas
from tests.gov_helpers import channel, query
from tests.helpers import Env
from tests.pgcluster import PgCluster

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.postgres]

IDLE_S = 10.0  # PgDatabase.idle_in_transaction_s: how long a silent session may hold the write lock
RETRYABLE = {"UNAVAILABLE", "ABORTED", "DEADLINE_EXCEEDED"}  # DEADLINE_EXCEEDED: the client's own timeout


class Load:
    """Client threads sending small queries to replicas until stopped, counting every outcome."""

    def __init__(self, cluster: Replicas, ports: list[int], threads: int, prefix: str) -> None:
        self.outcomes: Counter[tuple[int, str, str]] = Counter()
        self.answered: list[tuple[int, float]] = []  # (port, time) of every answer
        self.no_retry_info: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(cluster, ports[i % len(ports)], i, prefix),
                                          daemon=True) for i in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, cluster: Replicas, port: int, i: int, prefix: str) -> None:
        member = MEMBERS[i % len(MEMBERS)]
        with channel(cluster.tls, port, member) as ch:
            n = 0
            while not self._stop.is_set():
                n += 1
                try:
                    query(ch, 0.01, "crash", request_id=f"{prefix}-{i}-{n}", timeout=30)
                    outcome = (port, "OK", "")
                    with self._lock:
                        self.answered.append((port, time.monotonic()))
                except grpc.RpcError as exc:
                    status = status_of(exc)
                    outcome = (port, status.code.name, status.reason)
                    if status.code.name == "UNAVAILABLE" and status.reason and status.retry_after_s is None:
                        self.no_retry_info.append(status.reason)
                    time.sleep(0.05)
                with self._lock:
                    self.outcomes[outcome] += 1

    def answers_since(self, port: int, since: float) -> list[float]:
        with self._lock:
            return [t for p, t in self.answered if p == port and t >= since]

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)


@pytest.fixture
def two(env: Env, pg_cluster: PgCluster) -> Iterator[tuple[Replicas, list[subprocess.Popen[str]], list[int]]]:
    """Two replicas on a fresh database."""
    r = Replicas(env, pg_cluster.database())
    started = [r.start() for _ in range(2)]
    yield r, [p for p, _ in started], [port for _, port in started]
    for p in r.procs:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
    r.close()


def _pg(url: str, sql: str, *args: object) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, args).fetchall()


def _holds_write_lock(url: str, pid: int) -> bool:
    """True while a session of gateway process `pid` holds the write lock."""
    return bool(_pg(url, "SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                    " WHERE l.locktype = 'advisory' AND l.objid = %s AND l.granted AND a.application_name = %s",
                    WRITE_LOCK, f"pgw pid={pid}"))


def _settled_and_accounted(cluster: Replicas) -> None:
    deadline = time.monotonic() + 60
    while _pg(cluster.url, "SELECT 1 FROM charges WHERE status = 'reserved'"):
        assert time.monotonic() < deadline, "a reservation without an outcome"
        time.sleep(0.5)
    accounts = reconcile(PgDatabase(cluster.url))
    assert accounts.ok and accounts.in_flight == 0, json.dumps(accounts.to_json_obj())[:3000]
    done = cluster.audit_verify()
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_replica_frozen_holding_the_write_lock_stalls_the_other_at_most_the_idle_timeout(
        two: tuple[Replicas, list[subprocess.Popen[str]], list[int]]) -> None:
    cluster, (frozen, _), (port_f, port_o) = two
    load = Load(cluster, [port_f, port_o], 6, "freeze")
    try:
        deadline = time.monotonic() + 120
        while len(load.answers_since(port_f, 0)) < 10 or len(load.answers_since(port_o, 0)) < 10:
            assert time.monotonic() < deadline, load.outcomes
            time.sleep(0.1)
        tries = 0
        while tries < 600:  # freeze it at a moment its session holds the write lock
            tries += 1
            frozen.send_signal(signal.SIGSTOP)
            time.sleep(0.1)
            if _holds_write_lock(cluster.url, frozen.pid):
                break
            frozen.send_signal(signal.SIGCONT)
            time.sleep(random.uniform(0.0, 0.03))
        else:
            raise AssertionError("the replica was never caught holding the write lock")
        stopped = time.monotonic()
        # the other replica answers again once the server has ended the silent session
        deadline = stopped + IDLE_S + 15
        while not load.answers_since(port_o, stopped + 0.5):
            assert time.monotonic() < deadline, (f"the other replica answered nothing for {deadline - stopped:.0f} s"
                                                 f" after {tries} freezes", load.outcomes)
            time.sleep(0.1)
        resumed_other = load.answers_since(port_o, stopped + 0.5)[0] - stopped
        assert not _holds_write_lock(cluster.url, frozen.pid)
        time.sleep(max(0.0, stopped + 13 - time.monotonic()))  # past its lease: its reservations get settled
        frozen.send_signal(signal.SIGCONT)
        woke = time.monotonic()
        deadline = woke + 60
        while not load.answers_since(port_f, woke):
            assert time.monotonic() < deadline, ("the frozen replica did not answer again", load.outcomes)
            time.sleep(0.1)
    finally:
        frozen.send_signal(signal.SIGCONT)
        load.stop()
    codes = {code for _, code, _ in load.outcomes}
    print(f"\nfrozen after {tries} tries holding the write lock; the other replica answered again after "
          f"{resumed_other:.1f} s; outcomes {dict(load.outcomes)}")
    assert "INTERNAL" not in codes and codes <= {"OK"} | RETRYABLE, (load.outcomes, cluster.problems())
    assert not load.no_retry_info, load.no_retry_info
    _settled_and_accounted(cluster)


def test_sessions_ended_by_the_server_mid_load_are_unavailable_never_internal(
        two: tuple[Replicas, list[subprocess.Popen[str]], list[int]]) -> None:
    cluster, _, ports = two
    load = Load(cluster, ports, 8, "terminate")
    ended = 0
    try:
        deadline = time.monotonic() + 120
        while len(load.answers_since(ports[0], 0)) + len(load.answers_since(ports[1], 0)) < 20:
            assert time.monotonic() < deadline, load.outcomes
            time.sleep(0.1)
        until = time.monotonic() + 8
        while time.monotonic() < until:  # an administrator, a failover: every gateway session ended, repeatedly
            ended += len(_pg(cluster.url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                          " WHERE application_name LIKE 'pgw pid=%%'"))
            time.sleep(random.uniform(0.05, 0.3))
        calm = time.monotonic()
        deadline = calm + 30
        while not all(load.answers_since(p, calm + 1) for p in ports):
            assert time.monotonic() < deadline, ("the replicas did not answer again", load.outcomes)
            time.sleep(0.1)
    finally:
        load.stop()
    codes = {code for _, code, _ in load.outcomes}
    print(f"\n{ended} sessions ended; outcomes {dict(load.outcomes)}")
    assert ended > 0
    assert "INTERNAL" not in codes and codes <= {"OK"} | RETRYABLE, (load.outcomes, cluster.problems())
    assert not load.no_retry_info, load.no_retry_info
    _settled_and_accounted(cluster)

