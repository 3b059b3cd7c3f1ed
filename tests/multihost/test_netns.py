"""Several hosts on this machine (network namespaces, `tests/multihost/topology.py`): the data owner's host runs
the sandbox (`python -m sandbox --listen`, mutual TLS under the owner's CA), two gateway hosts run `pgw serve`
against it, and a clients' host drives load on both. Traffic flows only between the namespaces.

Mid-load the first gateway's process is SIGKILLed. Afterwards (that gateway restarted on its state, so its
settler gives the killed process's reservations their outcome) nothing is lost: every answer a client
received is a released charge in the ledger of the gateway that answered and has its audit entry; every
release is counted by the owner's cap ledger; everything the owner's cap ledger counted stayed charged in a
gateway's ledger (never refunded); no reservation is left open; and the owner's cap ledger holds exactly
its cap. Each gateway keeps its own SQLite state here; `test_netns_postgres.py` is the same topology with a
PostgreSQL host holding the two gateways' shared state.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from gateway.identity import certs
from gateway.settings import ROOT
from sandbox.pricing.periods import EPSILON_UNITS
from tests.gateway.budgets.test_owner_caps import IDENTITIES, POLICY, catalog_text
from tests.helpers import Env
from tests.multihost.topology import Hosts, available
from tests.net_helpers import OwnerSandbox

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EPSILON = 0.5  # per release
CAP = 80  # the owner's cap, epsilon per month: exactly CAP / EPSILON releases
RELEASES = int(CAP / EPSILON)
PORT = 50051


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _wait(pred: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


class GatewayHost:
    """`pgw serve` on one host, reaching the sandbox on the owner's host over mutual TLS."""

    def __init__(self, hosts: Hosts, name: str, root: Path, owner_tls: Path, sandbox: str,
                 extra: Sequence[str] = ()) -> None:
        self.hosts, self.name, self.root = hosts, name, root
        self.state = root / name
        self.address = hosts.addresses[name]
        self.cmd = [sys.executable, "-m", "gateway", "serve", "--listen", f"{self.address}:{PORT}",
                    "--policy", str(root / "operator.toml"), "--state-dir", str(self.state),
                    "--tls-dir", str(root / "tls"), "--sandbox-address", sandbox,
                    "--sandbox-tls-ca", str(owner_tls / "ca.crt"), "--sandbox-tls-cert", str(owner_tls / f"{name}.crt"),
                    "--sandbox-tls-key", str(owner_tls / f"{name}.key"), *extra]
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        log = (self.root / f"{self.name}.log").open("a")
        proc = self.hosts.run(self.name, self.cmd, stdout=subprocess.PIPE, stderr=log, cwd=str(ROOT),
                              env=dict(os.environ, PYTHONPATH=str(ROOT)))
        self.proc = proc
        ready = threading.Event()
        assert proc.stdout is not None
        out = proc.stdout

        def drain() -> None:
            for line in out:
                if line.startswith("gateway ready"):
                    ready.set()

        threading.Thread(target=drain, daemon=True).start()
        deadline = time.monotonic() + 90
        while not ready.wait(0.1):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not start:\n{(self.root / f'{self.name}.log').read_text()}")

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)

    @property
    def ledger(self) -> Path:
        return self.state / "ledger.sqlite3"


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    why = available()
    if why is not None:
        pytest.skip(f"multi-host test skipped: {why}")
    h = Hosts()
    try:
        for name in ("owner", "gw1", "gw2", "clients"):
            h.add(name)
        yield h
    finally:
        h.close()


def test_sigkill_of_a_gateway_host_mid_load_loses_nothing(env: Env, hosts: Hosts, tmp_path: Path) -> None:
    root = tmp_path
    gw_names = ("gw1", "gw2")
    owner_tls = root / "owner-tls"
    certs.write_owner_pki(owner_tls, gw_names, [hosts.addresses["owner"]])
    certs.write_dev_pki(root / "tls", clients=IDENTITIES,
                        server_hosts=tuple(hosts.addresses[n] for n in gw_names))
    (root / "operator.toml").write_text(POLICY)
    catalog = root / "catalog.toml"
    catalog.write_text(catalog_text(f'epsilon_per_period = {CAP:.1f}\ndelta_per_period = 1e-5\nperiod = "month"'))

    sandbox = OwnerSandbox(catalog, env.data_dir, owner_tls, root / "owner-state", host=hosts.addresses["owner"],
                           port=7000, prefix=hosts.prefix("owner")).start()
    gws = {n: GatewayHost(hosts, n, root, owner_tls, f"{hosts.addresses['owner']}:7000") for n in gw_names}
    load: subprocess.Popen[str] | None = None
    try:
        for gw in gws.values():
            gw.start()
        answers, stop = root / "answers.jsonl", root / "stop"
        load = hosts.run("clients", [
            sys.executable, "-m", "tests.multihost.load", "--tls-dir", str(root / "tls"), "--threads", "3",
            "--epsilon", str(EPSILON), "--out", str(answers), "--stop", str(stop),
            *[a for gw in gws.values() for a in ("--target", f"{gw.address}:{PORT}")]],
            cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL)

        def lines() -> list[dict[str, object]]:
            if not answers.exists():
                return []
            return [json.loads(x) for x in answers.read_text().splitlines() if x.endswith("}")]

        gw1_target = f"{gws['gw1'].address}:{PORT}"
        _wait(lambda: sum(1 for x in lines() if x["ok"] and x["target"] == gw1_target) >= 10, 180,
              "10 answers from gw1")
        gws["gw1"].signal(signal.SIGKILL)
        killed_at = len([x for x in lines() if x["ok"]])
        caps_db = sandbox.state / "caps.sqlite3"
        _wait(lambda: _rows(caps_db, "SELECT count(*) FROM cap_charges")[0][0] >= RELEASES, 300,
              "the owner's cap to be spent")
        time.sleep(1.0)  # let refusals at the cap arrive too
        stop.touch()
        assert load.wait(60) == 0
        gws["gw1"].start()  # its settler gives the killed process's reservations their outcome
        _wait(lambda: not _rows(gws["gw1"].ledger, "SELECT 1 FROM charges WHERE status = 'reserved'"), 60,
              "gw1's open reservations to be settled")
        for gw in gws.values():
            gw.signal(signal.SIGTERM)
    finally:
        if load is not None and load.poll() is None:
            load.kill()
        for gw in gws.values():
            gw.signal(signal.SIGKILL)
        sandbox.stop()

    got = lines()
    answered = {str(x["rid"]) for x in got if x["ok"]}
    assert all(x["receipt"] for x in got if x["ok"])
    by_gw = {n: {str(x["rid"]) for x in got if x["ok"] and x["target"] == f"{gw.address}:{PORT}"}
             for n, gw in gws.items()}
    released: set[str] = set()
    kept: set[str] = set()  # charged and never refunded
    for n, gw in gws.items():
        charges = {str(r): str(s) for r, s in _rows(gw.ledger, "SELECT request_id, status FROM charges")}
        audited = {str(r) for (r,) in _rows(gw.ledger, "SELECT request_id FROM entries")}
        assert "reserved" not in charges.values(), f"{n}: a reservation without an outcome"
        assert {r for r in by_gw[n] if charges.get(r) != "released"} == set(), f"{n}: an answer not released"
        assert by_gw[n] <= audited, f"{n}: an answer without an audit entry"
        assert set(charges) <= audited, f"{n}: a charge without an audit entry"
        released |= {r for r, s in charges.items() if s == "released"}
        kept |= set(charges)
    cap_rows = _rows(sandbox.state / "caps.sqlite3", "SELECT request_id, epsilon_units FROM cap_charges")
    owner_counted = {str(r).partition("/")[2] for r, _ in cap_rows}
    assert answered <= released <= owner_counted <= kept
    assert len(cap_rows) == RELEASES
    assert sum(int(str(u)) for _, u in cap_rows) == CAP * EPSILON_UNITS
    in_flight = owner_counted - released
    print(f"\nmulti-host: {len(answered)} answers ({killed_at} before gw1 was killed; gw1 {len(by_gw['gw1'])}, "
          f"gw2 {len(by_gw['gw2'])}), {len(got) - len(answered)} refusals/failures; the owner's cap ledger "
          f"{len(cap_rows)} releases = epsilon {CAP}; {len(in_flight)} reached the sandbox unanswered "
          "(gw1 killed) and stayed charged")
