"""`pgw serve --workers 2`: two gateway processes on one port and one sandbox. Under a budget of exactly N
queries, 32 concurrent clients through the one port get exactly N answers, and both workers charged some of
them; a worker SIGKILLed mid-load is restarted, and every answer that reached a client has its released charge
and audit entry, with nothing left reserved once the dead worker's lease has run out."""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from gateway.budgets.ledger import Ledger
from gateway.cli.client import error_details
from gateway.cli.workers import worker_argv
from gateway.identity import certs
from gateway.release.audit import AuditLog
from gateway.release.signing import Signer, load_or_create_hmac_key
from gateway.settings import ROOT
from tests.gov_helpers import channel, query
from tests.helpers import Env

N = 6  # the race grant allows exactly N queries of 0.25
CLIENTS = 32
MEMBERS = [f"worker{i}" for i in range(8)]
POLICY = 'schema = "privacy_gateway.operator.v2"\n[organizations.racers]\nname = "Racers"\n' + "\n".join(
    f'[organizations.racers.members.{m}]\nroles = ["consumer"]' for m in MEMBERS) + f"""
[purposes.race]
use_class = "public_welfare"
[[grants]]
organization = "racers"
dataset = "registry"
purpose = "race"
privacy_definition = "pure_dp"
epsilon = {N * 0.25}
delta = 0.0
max_epsilon_per_query = 0.25
period = "month"

[purposes.crash]
use_class = "public_welfare"
[[grants]]
organization = "racers"
dataset = "registry"
purpose = "crash"
privacy_definition = "pure_dp"
epsilon = 500.0
delta = 0.0
max_epsilon_per_query = 1.0
period = "month"
"""


def test_worker_argv_drops_what_the_master_decides() -> None:
    """Each worker gets the operator's flags except the port, the worker count, the console and metrics."""
    argv = ["--policy", "p.toml", "--listen", "0.0.0.0:50051", "--workers=2", "--metrics-port", "9100",
            "--console-listen=127.0.0.1:8443", "--state-dir", "s", "--dev"]
    assert worker_argv(argv) == ["--policy", "p.toml", "--state-dir", "s", "--dev"]


class Served:
    """A `pgw serve --workers 2` process and what it printed."""

    def __init__(self, env: Env) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pgw-w-"))
        self.tls = self.root / "tls"
        certs.write_dev_pki(self.tls, clients=MEMBERS)
        policy = self.root / "operator.toml"
        policy.write_text(POLICY)
        self.state = self.root / "state"
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--workers", "2", "--listen", "127.0.0.1:0",
             "--policy", str(policy), "--state-dir", str(self.state), "--tls-dir", str(self.tls),
             "--data-dir", str(env.data_dir)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        ready = threading.Event()
        self.port = 0
        self.worker_pids: list[int] = []

        def pump() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line.rstrip("\n"))
                m = re.match(r"gateway ready port=(\d+) .*workers=2 worker_pids=([\d ]+)", line)
                if m:
                    self.port = int(m.group(1))
                    self.worker_pids = [int(p) for p in m.group(2).split()]
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(180):
            self.close()
            raise AssertionError("pgw serve --workers 2 did not become ready:\n" + "\n".join(self.lines[-30:]))

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def served(env: Env) -> Iterator[Served]:
    """One `pgw serve --workers 2` for this module."""
    s = Served(env)
    yield s
    s.close()


@pytest.mark.slow
@pytest.mark.integration
def test_two_workers_on_one_port_answer_exactly_the_budget(served: Served) -> None:
    """32 concurrent clients (one channel each) through the one port: exactly N answers, from both workers."""
    assert len(set(served.worker_pids)) == 2
    barrier = threading.Barrier(CLIENTS)

    def one(i: int) -> str:
        with channel(served.tls, served.port, MEMBERS[i % len(MEMBERS)]) as ch:
            grpc.channel_ready_future(ch).result(timeout=60)
            query(ch, 0.01, "crash", request_id=f"spread-{i}")  # one charge per connection, to see the spread
            barrier.wait(timeout=60)
            try:
                query(ch, 0.25, "race", request_id=f"race-{i}")
                return "ok"
            except grpc.RpcError as exc:
                return error_details(exc).reason

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(one, range(CLIENTS)))
    assert results.count("ok") == N, results
    assert results.count("PRIVACY_BUDGET_EXHAUSTED") == CLIENTS - N, results
    with Ledger(served.state / "ledger.sqlite3") as ledger:
        ledger.verify()
        ledger.verify_units()
        rows = [c for c in ledger.charges_between(None, None) if c["purpose"] == "race"]
        assert len(rows) == N and all(c["status"] == "released" for c in rows)
        # Both workers charged: the 32 connections' charges have two holders, one per worker process (all 32
        # landing on one worker has probability 2^-31 under the kernel's SO_REUSEPORT hashing).
    conn = sqlite3.connect(f"file:{served.state / 'ledger.sqlite3'}?mode=ro", uri=True)
    try:
        pids = {int(r[0]) for r in conn.execute(
            "SELECT DISTINCT h.pid FROM charges c JOIN holders h ON h.holder = c.holder"
            " WHERE c.request_id LIKE 'spread-%'").fetchall()}
    finally:
        conn.close()
    assert pids == set(served.worker_pids)


def _restarted(lines: list[str], worker: int) -> bool:
    """The master reported the worker's death and the worker's new "ready" line came after it."""
    died = [i for i, ln in enumerate(lines) if ln.startswith(f"worker {worker} exited")]
    return bool(died) and any(ln.startswith(f"worker {worker}: gateway ready") for ln in lines[died[0]:])


@pytest.mark.slow
@pytest.mark.integration
def test_a_worker_killed_mid_load_is_restarted_and_its_charges_settle(served: Served) -> None:
    """SIGKILL one worker under load: the master restarts it; every received answer is charged and audited,
    and after the dead worker's lease no charge stays reserved."""
    answered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def load(i: int) -> None:
        member = MEMBERS[i % len(MEMBERS)]
        while not stop.is_set():
            with channel(served.tls, served.port, member) as ch:  # fresh connections reach the restarted worker
                for n in range(20):
                    if stop.is_set():
                        return
                    rid = f"crash-{i}-{time.monotonic_ns()}-{n}"
                    try:
                        resp = query(ch, 0.01, "crash", request_id=rid, timeout=20)
                    except grpc.RpcError:
                        break
                    with lock:
                        answered.append(f"{member}/{resp.request_id}")

    threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(16)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(answered) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    victim = served.worker_pids[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while not _restarted(served.lines, worker=0):
        assert time.monotonic() < deadline, "\n".join(served.lines[-30:])
        time.sleep(0.2)
    time.sleep(2.0)  # some load on the restarted pair
    stop.set()
    for t in threads:
        t.join(30)
    assert len(answered) >= 40
    ledger_path = served.state / "ledger.sqlite3"
    deadline = time.monotonic() + 60  # lease 10 s, settler every second
    while True:
        with Ledger(ledger_path) as ledger:
            charges = {f"{c['consumer']}/{c['request_id']}": c for c in ledger.charges_between(None, None)
                       if c["purpose"] == "crash"}
        reserved = [k for k, c in charges.items() if c["status"] == "reserved"]
        if not reserved:
            break
        assert time.monotonic() < deadline, f"still reserved after the lease: {reserved[:5]}"
        time.sleep(1.0)
    missing = [a for a in answered if a not in charges or charges[a]["status"] != "released"]
    assert not missing
    with Ledger(ledger_path) as ledger:
        ledger.verify()
        ledger.verify_units()
    audit = AuditLog(ledger_path, Signer.load_or_create(served.state), load_or_create_hmac_key(served.state))
    try:
        report = audit.verify()
        assert report.ok, report.problems
        audited = {f"{e.consumer}/{e.request_id}" for e in audit.entries() if e.outcome == "answered"}
    finally:
        audit.close()
    assert not [a for a in answered if a not in audited]
