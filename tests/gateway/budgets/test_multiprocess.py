"""Two gateway processes on one state directory never overspend; a SIGKILLed gateway loses no charge."""

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
from gateway.release.audit import AuditLog
from gateway.release.signing import Signer, load_or_create_hmac_key
from gateway.settings import ROOT
from sandbox.client import SandboxProcess
from tests.gov_helpers import channel, query
from tests.helpers import Env

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROUNDS = 3
N = 5  # each round's grant allows exactly N queries of 0.25
MEMBERS = [f"racer{i}" for i in range(8)]


def _policy() -> str:
    members = "\n".join(f'[organizations.racers.members.{m}]\nroles = ["consumer"]' for m in MEMBERS)
    grants = "\n".join(f"""
[purposes.race{r}]
use_class = "public_welfare"
[[grants]]
organization = "racers"
dataset = "registry"
purpose = "race{r}"
privacy_definition = "pure_dp"
epsilon = {N * 0.25}
delta = 0.0
max_epsilon_per_query = 0.25
period = "month"
""" for r in range(ROUNDS))
    grants += """
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
    return f'schema = "privacy_gateway.operator.v2"\n[organizations.racers]\nname = "Racers"\n{members}\n{grants}'


class Cluster:
    """One sandbox process and gateway processes sharing a state directory."""

    def __init__(self, env: Env) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pgw-mp-"))
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

    def start_gateway(self) -> tuple[subprocess.Popen[str], int]:
        e = {**os.environ, "PRIVACY_GATEWAY_START_SANDBOX": "false",
             "PRIVACY_GATEWAY_SANDBOX_SOCKET": str(self.socket), "PYTHONUNBUFFERED": "1"}
        p = subprocess.Popen(
            [sys.executable, "-m", "gateway", "serve", "--listen", "127.0.0.1:0", "--policy", str(self.policy),
             "--state-dir", str(self.state), "--tls-dir", str(self.tls), "--data-dir", str(self.env.data_dir)],
            stdout=subprocess.PIPE, stderr=(self.state / f"gateway-{len(self.procs)}.log").open("a"), text=True,
            env=e, cwd=ROOT,
        )
        self.procs.append(p)
        assert p.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = p.stdout.readline()
            m = re.match(r"gateway ready port=(\d+)", line)
            if m:
                threading.Thread(target=p.stdout.read, daemon=True).start()  # keep the pipe drained
                return p, int(m.group(1))
            if not line and p.poll() is not None:
                break
        raise RuntimeError("gateway did not start")

    def problems(self) -> str:
        """The gateways' log lines at ERROR or above (what a failed assertion shows)."""
        lines = [line for log in sorted(self.state.glob("gateway-*.log"))
                 for line in log.read_text(errors="replace").splitlines()
                 if any(w in line for w in ("ERROR", "CRITICAL", "Traceback", "Error:"))]
        return "\n".join(lines[-40:])

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        self.sandbox.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(env: Env) -> Iterator[Cluster]:
    """A sandbox and its state directory for this module."""
    c = Cluster(env)
    yield c
    c.close()


def test_two_gateways_64_clients_never_overspend(cluster: Cluster) -> None:
    """64 concurrent clients across two gateway processes: exactly N of each round succeed."""
    (_, port_a), (_, port_b) = cluster.start_gateway(), cluster.start_gateway()
    for r in range(ROUNDS):
        barrier = threading.Barrier(64)

        def one(i: int, r: int = r, barrier: threading.Barrier = barrier) -> str:
            port = port_a if i % 2 else port_b
            with channel(cluster.tls, port, MEMBERS[i % len(MEMBERS)]) as ch:
                grpc.channel_ready_future(ch).result(timeout=30)
                barrier.wait(timeout=60)
                try:
                    query(ch, 0.25, f"race{r}", request_id=f"r{r}-{i}")
                    return "ok"
                except grpc.RpcError as exc:
                    return error_details(exc).reason

        with ThreadPoolExecutor(64) as pool:
            results = list(pool.map(one, range(64)))
        assert results.count("ok") == N, (results, cluster.problems())
        assert results.count("PRIVACY_BUDGET_EXHAUSTED") == 64 - N, (results, cluster.problems())
    with Ledger(cluster.state / "ledger.sqlite3") as ledger:
        ledger.verify()
        ledger.verify_units()
        rows = [c for c in ledger.charges_between(None, None) if str(c["purpose"]).startswith("race")]
        assert len(rows) == N * ROUNDS and all(c["status"] == "released" for c in rows)


def test_sigkill_mid_load_loses_no_charge(cluster: Cluster) -> None:
    """Kill -9 a loaded gateway: after restart every received answer has its charge and audit entry."""
    proc, port = cluster.start_gateway()
    answered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def load(i: int) -> None:
        with channel(cluster.tls, port, MEMBERS[i % len(MEMBERS)]) as ch:
            n = 0
            while not stop.is_set():
                rid = f"crash-{i}-{n}"
                n += 1
                try:
                    resp = query(ch, 0.01, "crash", request_id=rid, timeout=10)
                except grpc.RpcError:
                    continue
                with lock:
                    answered.append(f"{MEMBERS[i % len(MEMBERS)]}/{resp.request_id}")

    threads = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(16)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(answered) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stop.set()
    for t in threads:
        t.join(15)
    assert len(answered) >= 40
    _, port2 = cluster.start_gateway()  # restart on the same state directory
    with Ledger(cluster.state / "ledger.sqlite3") as ledger:
        ledger.verify()
        ledger.verify_units()
        charges = {f"{c['consumer']}/{c['request_id']}": c for c in ledger.charges_between(None, None)
                   if c["purpose"] == "crash"}
        missing = [a for a in answered if a not in charges or charges[a]["status"] != "released"]
        assert not missing
        total = sum(int(c["epsilon_units"]) for c in charges.values())  # type: ignore[call-overload]
        assert total == len(charges) * 10_000_000
    # The audit log agrees: every answer that reached a client was appended before it left, and the
    # chain (entries written up to the kill, then the restarted gateway's) still verifies.
    audit = AuditLog(cluster.state / "ledger.sqlite3", Signer.load_or_create(cluster.state),
                     load_or_create_hmac_key(cluster.state))
    try:
        report = audit.verify()
        assert report.ok, report.problems
        audited = {f"{e.consumer}/{e.request_id}" for e in audit.entries() if e.outcome == "answered"}
    finally:
        audit.close()
    assert not [a for a in answered if a not in audited]
    member, rid = answered[0].split("/", 1)
    with channel(cluster.tls, port2, member) as ch:
        assert query(ch, 0.01, "crash", request_id=rid).replayed
