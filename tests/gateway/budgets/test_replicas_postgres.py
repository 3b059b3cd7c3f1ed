"""Three `pgw serve` replicas on one PostgreSQL database: no overspend, no double charge, one audit chain.

The replicas are real processes (`python -m gateway serve`) with `PRIVACY_GATEWAY_STORAGE_URL` set to one
database of the session's throwaway cluster; they share one state directory (the gateway's signing and
pseudonymisation keys, which every replica needs to extend and check the one chain) and one sandbox
process (start_sandbox = false, one socket), so the data owner's cap ledger is that sandbox's.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
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
from gateway.identity import certs
from gateway.release.accounting import reconcile
from gateway.settings import ROOT
from gateway.storage.pg import PgDatabase
from gateway.storage.sqlite import open_location
from sandbox.client import SandboxProcess
from tests.gov_helpers import channel, query
from tests.helpers import Env
from tests.pgcluster import PgCluster

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.postgres]

N = 7  # the race grant allows exactly N queries of 0.25
MEMBERS = [f"racer{i}" for i in range(8)]


def _policy(*, late: bool = False) -> str:
    members = "\n".join(f'[organizations.racers.members.{m}]\nroles = ["consumer"]' for m in MEMBERS)
    grants = ""
    for purpose, epsilon, per_query in (("race", N * 0.25, 0.25), ("replay", 10.0, 1.0), ("crash", 500.0, 1.0),
                                        *((("late", 1.0, 0.5),) if late else ())):
        grants += f"""
[purposes.{purpose}]
use_class = "public_welfare"
[[grants]]
organization = "racers"
dataset = "registry"
purpose = "{purpose}"
privacy_definition = "pure_dp"
epsilon = {epsilon}
delta = 0.0
max_epsilon_per_query = {per_query}
period = "month"
"""
    return f'schema = "privacy_gateway.operator.v2"\n[organizations.racers]\nname = "Racers"\n{members}\n{grants}'


class Replicas:
    """One sandbox, one state directory, one PostgreSQL database, and gateway processes on them."""

    def __init__(self, env: Env, url: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pgw-rep-"))
        self.url = url
        self.tls = self.root / "tls"
        certs.write_dev_pki(self.tls, clients=MEMBERS)
        self.policy = self.root / "operator.toml"
        self.policy.write_text(_policy())
        self.state = self.root / "state"
        self.state.mkdir()
        self.socket = self.state / "sandbox.sock"
        self.env = env
        self.sandbox = SandboxProcess.start(ROOT / "policies" / "catalog.toml", self.socket, env.data_dir)
        self.procs: list[subprocess.Popen[str]] = []

    def start(self) -> tuple[subprocess.Popen[str], int]:
        """Start one replica; its process and port."""
        e = {**os.environ, "PRIVACY_GATEWAY_START_SANDBOX": "false", "PRIVACY_GATEWAY_SANDBOX_SOCKET": str(self.socket),
             "PRIVACY_GATEWAY_STORAGE_URL": self.url, "PRIVACY_GATEWAY_POLICY_POLL_MS": "200",
             "PYTHONUNBUFFERED": "1"}
        p = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--listen", "127.0.0.1:0", "--policy", str(self.policy),
             "--state-dir", str(self.state), "--tls-dir", str(self.tls), "--data-dir", str(self.env.data_dir)],
            stdout=subprocess.PIPE, stderr=(self.state / f"gateway-{len(self.procs)}.log").open("a"), text=True,
            env=e, cwd=ROOT,
        )
        self.procs.append(p)
        assert p.stdout is not None
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            m = re.match(r"gateway ready port=(\d+)", line)
            if m:
                threading.Thread(target=p.stdout.read, daemon=True).start()  # keep the pipe drained
                return p, int(m.group(1))
            if not line and p.poll() is not None:
                break
        raise RuntimeError("gateway replica did not start")

    def problems(self) -> str:
        """The replicas' log lines at ERROR or above, with tracebacks (what a failed assertion shows)."""
        lines = [line for log in sorted(self.state.glob("gateway-*.log"))
                 for line in log.read_text(errors="replace").splitlines()
                 if not line.startswith("20") or any(w in line for w in ("ERROR", "CRITICAL"))]
        return "\n".join(lines[-80:])

    def audit_verify(self) -> subprocess.CompletedProcess[str]:
        """`pgw audit verify` on the shared storage, as an operator runs it."""
        return subprocess.run(
            [sys.executable, "-m", "gateway", "audit", "verify", "--state-dir", str(self.state), "--storage-url",
             self.url], capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                p.wait(15)
        self.sandbox.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def replicas(env: Env, pg_cluster: PgCluster) -> Iterator[tuple[Replicas, list[int]]]:
    """Three replicas on one fresh database, started one after the other."""
    r = Replicas(env, pg_cluster.database())
    ports = [r.start()[1] for _ in range(3)]
    yield r, ports
    r.close()


def _charges(url: str, purpose: str) -> dict[str, dict[str, object]]:
    with Ledger(PgDatabase(url)) as ledger:
        return {f"{c['consumer']}/{c['request_id']}": c for c in ledger.charges_between(None, None)
                if c["purpose"] == purpose}


def test_64_clients_on_3_replicas_never_overspend(replicas: tuple[Replicas, list[int]]) -> None:
    """64 concurrent clients spread over three replicas against a grant of exactly N answers: N answered, the
    rest refused, the ledger verifies, and the audit log accounts for every charge (ledger = audit)."""
    cluster, ports = replicas
    barrier = threading.Barrier(64)

    def one(i: int) -> str:
        with channel(cluster.tls, ports[i % 3], MEMBERS[i % len(MEMBERS)]) as ch:
            grpc.channel_ready_future(ch).result(timeout=30)
            barrier.wait(timeout=60)
            try:
                query(ch, 0.25, "race", request_id=f"race-{i}")
                return "ok"
            except grpc.RpcError as exc:
                return error_details(exc).reason

    started = time.monotonic()
    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, range(64)))
    print(f"64 clients on 3 replicas: {time.monotonic() - started:.1f} s")
    assert results.count("ok") == N, results
    assert results.count("PRIVACY_BUDGET_EXHAUSTED") == 64 - N, results
    with Ledger(PgDatabase(cluster.url)) as ledger:
        ledger.verify()
        ledger.verify_units()
        ledger.verify_buckets()
    charges = _charges(cluster.url, "race")
    assert len(charges) == N and all(c["status"] == "released" for c in charges.values())
    accounts = reconcile(PgDatabase(cluster.url))
    assert accounts.ok and accounts.in_flight == 0, accounts.to_json_obj()
    done = cluster.audit_verify()
    assert done.returncode == 0, done.stdout + done.stderr


def test_request_id_replay_and_cache_work_across_replicas(replicas: tuple[Replicas, list[int]]) -> None:
    """A request id answered by one replica replays the same release on the others (charged once); the same
    query under a new id is the charge-once cache's hit on a third replica (no new charge)."""
    cluster, ports = replicas
    sql = "SELECT COUNT(*) FROM residents WHERE birth_year > 1950"
    with channel(cluster.tls, ports[0], "racer0") as ch:
        first = query(ch, 0.5, "replay", request_id="same-id", sql=sql)
    assert not first.replayed
    for port in ports[1:]:
        with channel(cluster.tls, port, "racer0") as ch:
            again = query(ch, 0.5, "replay", request_id="same-id", sql=sql)
        assert again.replayed
        assert again.rows == first.rows and again.receipt == first.receipt
    with channel(cluster.tls, ports[2], "racer0") as ch:
        cached = query(ch, 0.5, "replay", request_id="other-id", sql=sql)
    assert cached.cached and cached.rows == first.rows
    charges = _charges(cluster.url, "replay")  # the cache hit is recorded at zero cost under its own id
    assert sorted(charges) == ["racer0/other-id", "racer0/same-id"], charges
    assert charges["racer0/same-id"]["epsilon"] == 0.5 and charges["racer0/other-id"]["epsilon"] == 0.0


def test_a_reload_through_one_replica_reaches_the_others(replicas: tuple[Replicas, list[int]]) -> None:
    """SIGHUP to one replica after the policy file gained a grant: every replica serves it within a poll."""
    cluster, ports = replicas
    with channel(cluster.tls, ports[1], "racer1") as ch:
        assert _refused(ch).code() != grpc.StatusCode.OK
    cluster.policy.write_text(_policy(late=True))
    cluster.procs[0].send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    answered: set[int] = set()
    while time.monotonic() < deadline and len(answered) < 3:
        for i, port in enumerate(ports):
            if i in answered:
                continue
            with channel(cluster.tls, port, "racer1") as ch:
                try:
                    query(ch, 0.1, "late", request_id=f"late-{i}")
                    answered.add(i)
                except grpc.RpcError:
                    pass
        time.sleep(0.2)
    assert answered == {0, 1, 2}


def _refused(ch: grpc.Channel) -> grpc.RpcError:
    try:
        query(ch, 0.1, "late", request_id="late-before")
    except grpc.RpcError as exc:
        return exc
    raise AssertionError("the purpose was served before the reload")


def test_sigkill_one_replica_mid_load(replicas: tuple[Replicas, list[int]]) -> None:
    """Kill -9 one of three loaded replicas: every answer a client received is charged and audited once, the
    survivors settle the dead replica's reservations, and `pgw audit verify` passes on the whole chain."""
    cluster, ports = replicas
    victim_proc, victim_port = cluster.start()  # a fourth replica, killed below
    targets = [victim_port, *ports]
    answered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def load(i: int) -> None:
        member = MEMBERS[i % len(MEMBERS)]
        with channel(cluster.tls, targets[i % len(targets)], member) as ch:
            n = 0
            while not stop.is_set():
                rid = f"crash-{i}-{n}"
                n += 1
                try:
                    resp = query(ch, 0.01, "crash", request_id=rid, timeout=10)
                except grpc.RpcError:
                    continue
                with lock:
                    answered.append(f"{member}/{resp.request_id}")

    threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(16)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(answered) < 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    victim_proc.send_signal(signal.SIGKILL)
    victim_proc.wait()
    time.sleep(1.0)  # the survivors keep answering for a moment
    stop.set()
    for t in threads:
        t.join(20)
    assert len(answered) >= 60
    # the settler of a survivor settles the dead replica's reservations once its lease (10 s) has expired
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        conn = open_location(PgDatabase(cluster.url), busy_timeout_s=5)
        try:
            (reserved,) = conn.execute("SELECT count(*) FROM charges WHERE status = 'reserved'").fetchone()
        finally:
            conn.close()
        if reserved == 0:
            break
        time.sleep(0.5)
    assert reserved == 0
    charges = _charges(cluster.url, "crash")
    assert len(answered) == len(set(answered))
    assert not [a for a in answered if a not in charges or charges[a]["status"] != "released"]
    accounts = reconcile(PgDatabase(cluster.url))
    assert accounts.ok and accounts.in_flight == 0, accounts.to_json_obj()
    done = cluster.audit_verify()
    assert done.returncode == 0, done.stdout + done.stderr


def test_tampered_audit_row_in_postgres_fails_verify(replicas: tuple[Replicas, list[int]]) -> None:
    """An audit row edited in PostgreSQL (by a superuser, triggers off) fails `pgw audit verify`."""
    cluster, _ = replicas
    assert cluster.audit_verify().returncode == 0
    conn = open_location(PgDatabase(cluster.url), busy_timeout_s=5)
    try:
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE entries SET epsilon = 0.0 WHERE seq = (SELECT max(seq) / 2 FROM entries)")
    finally:
        conn.close()
    done = cluster.audit_verify()
    assert done.returncode == 1, done.stdout
    assert "FAILED" in done.stdout
