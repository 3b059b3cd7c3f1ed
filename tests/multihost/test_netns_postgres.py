"""Gateway replicas on separate hosts sharing PostgreSQL (network namespaces, `tests/multihost/topology.py`): a
PostgreSQL host (listening on its address, trust authentication for the two gateway hosts' addresses only), the
data owner's host with the sandbox (`python -m sandbox --listen`, mutual TLS under the owner's CA), two gateway
hosts running `pgw serve --storage-url postgresql://...@<pg host>/...` with the same signing and audit keys
(copied from the first gateway's state directory before the second starts, as docs/deployment.md says), and a
clients' host driving load on both. Traffic flows only between the namespaces.

First, the member's budget is shared: a grant sized for exactly N answers, raced by clients on both gateways,
yields exactly N. Then under load on both gateways the first gateway's process is SIGKILLed; the survivor keeps
answering until the gateways' ledger has spent the owner's cap, and its settler gives the dead process's
reservations their outcome once their 10 s lease expires (the killed gateway is not restarted). Nothing is
lost: every answer a client received is a released charge in the shared ledger with its audit entry; every
release is counted by the owner's cap ledger and everything that ledger counted stayed charged (never
refunded); no reservation is left open; `pgw audit verify --storage-url` passes over the whole shared chain.
The clients' host cannot open the database (no pg_hba.conf entry for it).

The owner's cap ledger holds its cap less the killed gateway's charges that never reached the sandbox: a
charge is committed before its request is sent, and the settler cannot tell whether a dead gateway's request
touched the data, so it keeps every such charge (failed, audited), and the gateways' mirror of the owner's cap
counts it. The gateways stop at the cap in their ledger: exactly CAP in all, of which the owner's cap ledger
counted all but those. The kill lands in that window now and then by chance (`mid_load`, as it happens); the
`before_the_sandbox` case puts it there every time: gw1's route to the owner's host is made a blackhole first,
so the requests it charges stay in its socket buffers, and it is killed holding such reservations.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from gateway.identity import certs
from gateway.settings import ROOT
from sandbox.pricing.periods import EPSILON_UNITS
from tests.gateway.budgets.test_owner_caps import IDENTITIES, POLICY, catalog_text
from tests.helpers import Env
from tests.multihost.test_netns import PORT, GatewayHost, _rows, _wait
from tests.multihost.topology import Hosts, available
from tests.net_helpers import OwnerSandbox
from tests.pgcluster import PgCluster, start_cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.postgres]

EPSILON = 0.5  # per release
CAP = 60  # the owner's cap, epsilon per month: exactly CAP / EPSILON releases in all
RELEASES = int(CAP / EPSILON)
N = 5  # the "race" grant allows exactly N releases of EPSILON, whichever gateway answers
RACE_POLICY = POLICY + f"""
[purposes.race]
use_class = "public_welfare"

[[grants]]
organization = "bank"
dataset = "registry"
purpose = "race"
privacy_definition = "pure_dp"
epsilon = {N * EPSILON}
delta = 0.0
max_epsilon_per_query = {EPSILON}
period = "month"
"""
GATEWAYS = ("gw1", "gw2")


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    why = available()
    if why is not None:
        pytest.skip(f"multi-host test skipped: {why}")
    h = Hosts()
    try:
        for name in ("pg", "owner", *GATEWAYS, "clients"):
            h.add(name)
        yield h
    finally:
        h.close()


@pytest.fixture
def pg_host(hosts: Hosts) -> Iterator[PgCluster]:
    """PostgreSQL on the pg host, reachable over TCP from the gateway hosts only."""
    cluster = start_cluster(listen=hosts.addresses["pg"], trusted=[hosts.addresses[g] for g in GATEWAYS],
                            prefix=hosts.prefix("pg"))
    if isinstance(cluster, str):
        pytest.skip(f"multi-host PostgreSQL test skipped: {cluster}")
    yield cluster
    cluster.stop()


def _pg(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def _spent(url: str) -> float:
    """Epsilon charged on the dataset in the gateways' ledger (released, failed and reserved charges)."""
    return float(str(_pg(url, "SELECT coalesce(sum(epsilon), 0) FROM charges")[0][0]))


def _diagnosis(url: str, outcomes: list[dict[str, object]], caps_db: Path) -> str:
    """What a stalled run looks like: the clients' outcomes, the ledger, the owner's count, the sessions."""
    counts: dict[tuple[object, ...], int] = {}
    for x in outcomes:
        k = (x["target"], x["ok"], x.get("code"), x.get("reason"))
        counts[k] = counts.get(k, 0) + 1
    return "\n".join([
        f"outcomes since the kill: {counts}",
        f"charges: {_pg(url, 'SELECT status, count(*), sum(epsilon) FROM charges GROUP BY status')}",
        f"the owner's cap ledger: {_rows(caps_db, 'SELECT count(*) FROM cap_charges')}",
        *(str(r) for r in _pg(url, "SELECT application_name, client_addr, state, wait_event, now() - xact_start,"
                                   " left(query, 80) FROM pg_stat_activity WHERE client_addr IS NOT NULL"))])


@pytest.mark.parametrize("moment", ["mid_load", "before_the_sandbox"])
def test_gateway_hosts_share_postgres_and_a_sigkill_mid_load_loses_nothing(
        env: Env, hosts: Hosts, pg_host: PgCluster, tmp_path: Path, moment: str) -> None:
    started = time.monotonic()
    root = tmp_path
    owner_tls = root / "owner-tls"
    certs.write_owner_pki(owner_tls, GATEWAYS, [hosts.addresses["owner"]])
    certs.write_dev_pki(root / "tls", clients=IDENTITIES,
                        server_hosts=tuple(hosts.addresses[n] for n in GATEWAYS))
    (root / "operator.toml").write_text(RACE_POLICY)
    catalog = root / "catalog.toml"
    catalog.write_text(catalog_text(f'epsilon_per_period = {CAP:.1f}\ndelta_per_period = 1e-5\nperiod = "month"'))
    local_url = pg_host.database()  # the test's own look at the rows, over the server's Unix socket
    dbname = local_url.partition("///")[2].partition("?")[0]
    url = f"postgresql://postgres@{hosts.addresses['pg']}:5432/{dbname}"  # what the gateway hosts use

    refused = hosts.run("clients", [sys.executable, "-c", "import sys, psycopg; psycopg.connect(sys.argv[1], "
                                    "connect_timeout=10)", url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert refused.wait(60) != 0, "the clients' host reached the gateways' database"
    assert refused.stdout is not None and "no pg_hba.conf entry" in refused.stdout.read()

    sandbox = OwnerSandbox(catalog, env.data_dir, owner_tls, root / "owner-state", host=hosts.addresses["owner"],
                           port=7000, prefix=hosts.prefix("owner")).start()
    gws = {n: GatewayHost(hosts, n, root, owner_tls, f"{hosts.addresses['owner']}:7000", ["--storage-url", url])
           for n in GATEWAYS}
    answers, stop = root / "answers.jsonl", root / "stop"
    targets = [a for gw in gws.values() for a in ("--target", f"{gw.address}:{PORT}")]

    def client_load(*args: str) -> subprocess.Popen[str]:
        return hosts.run("clients", [
            sys.executable, "-m", "tests.multihost.load", "--tls-dir", str(root / "tls"), "--epsilon", str(EPSILON),
            "--out", str(answers), "--stop", str(stop), *targets, *args],
            cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL)

    def lines() -> list[dict[str, object]]:
        if not answers.exists():
            return []
        return [json.loads(x) for x in answers.read_text().splitlines() if x.endswith("}")]

    load: subprocess.Popen[str] | None = None
    killed_at = open_at_kill = 0
    try:
        gws["gw1"].start()
        (gws["gw2"].state / "keys").parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(gws["gw1"].state / "keys", gws["gw2"].state / "keys")
        shutil.copy2(gws["gw1"].state / "verification-hmac.key", gws["gw2"].state / "verification-hmac.key")
        gws["gw2"].start()

        # the member's budget is one budget: 4 threads per gateway, 2 tries each, against a grant of N
        race = client_load("--purpose", "race", "--threads", "4", "--count", "2", "--rid-prefix", "race-")
        assert race.wait(120) == 0
        raced = [x for x in lines() if str(x["rid"]).startswith("race-")]
        assert len(raced) == 16
        assert sum(1 for x in raced if x["ok"]) == N, raced
        assert {x.get("reason") for x in raced if not x["ok"]} == {"PRIVACY_BUDGET_EXHAUSTED"}, raced
        race_by = {t: sum(1 for x in raced if x["ok"] and x["target"] == t) for t in {str(x["target"]) for x in raced}}

        load = client_load("--purpose", "credit", "--threads", "3", "--rid-prefix", "load-")
        gw1_target = f"{gws['gw1'].address}:{PORT}"
        _wait(lambda: sum(1 for x in lines() if x["ok"] and x["target"] == gw1_target
                          and str(x["rid"]).startswith("load-")) >= 10, 180, "10 answers from gw1")
        caps_db = sandbox.state / "caps.sqlite3"
        gw1_pid = gws["gw1"].proc.pid if gws["gw1"].proc is not None else 0

        def unsent() -> set[str]:  # gw1's reservations the owner's cap ledger has not counted
            reserved = {f"{c}/{r}" for c, r in _pg(
                local_url, "SELECT c.consumer, c.request_id FROM charges c JOIN holders h ON h.holder = c.holder"
                f" WHERE h.pid = {gw1_pid} AND c.status = 'reserved'")}
            return reserved - {str(r) for (r,) in _rows(caps_db, "SELECT request_id FROM cap_charges")}

        if moment == "before_the_sandbox":
            subprocess.run([*hosts.prefix("gw1"), "ip", "route", "add", "blackhole", f"{hosts.addresses['owner']}/32"],
                           check=True)
            _wait(lambda: bool(unsent()), 60, "gw1 to hold a charge the sandbox has not seen")
        gws["gw1"].signal(signal.SIGKILL)
        killed_at = sum(1 for x in lines() if x["ok"])
        open_at_kill = len(_pg(local_url, "SELECT 1 FROM charges WHERE status = 'reserved'"))
        try:
            _wait(lambda: _spent(local_url) >= CAP - 1e-9, 300, "the gateways to spend the owner's cap")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{_diagnosis(local_url, lines()[killed_at:], caps_db)}") from None
        time.sleep(1.0)  # let refusals at the cap arrive too
        stop.touch()
        assert load.wait(60) == 0
        # gw2's settler settles the killed process's reservations once their lease (10 s) has expired
        _wait(lambda: not _pg(local_url, "SELECT 1 FROM charges WHERE status = 'reserved'"), 60,
              "the killed gateway's reservations to be settled by the survivor")
        verify = hosts.run("gw2", [sys.executable, "-m", "gateway", "audit", "verify", "--storage-url", url,
                                   "--state-dir", str(gws["gw2"].state)],
                           cwd=str(ROOT), env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)
        verified = verify.communicate(timeout=120)[0]
        assert verify.returncode == 0, verified
        gws["gw2"].signal(signal.SIGTERM)
    finally:
        if load is not None and load.poll() is None:
            load.kill()
        for gw in gws.values():
            gw.signal(signal.SIGKILL)
        sandbox.stop()

    got = lines()
    answered = {str(x["rid"]) for x in got if x["ok"]}
    assert all(x["receipt"] for x in got if x["ok"])
    charges = {str(r): str(s) for r, s in _pg(local_url, "SELECT request_id, status FROM charges")}
    audited = {str(r) for (r,) in _pg(local_url, "SELECT request_id FROM entries")}
    assert "reserved" not in charges.values(), "a reservation without an outcome"
    assert {r for r in answered if charges.get(r) != "released"} == set(), "an answer not released"
    assert answered <= audited, "an answer without an audit entry"
    assert set(charges) <= audited, "a charge without an audit entry"
    released = {r for r, s in charges.items() if s == "released"}
    cap_rows = _rows(sandbox.state / "caps.sqlite3", "SELECT request_id, epsilon_units FROM cap_charges")
    owner_counted = {str(r).partition("/")[2] for r, _ in cap_rows}
    assert answered <= released <= owner_counted <= set(charges)
    never_sent = set(charges) - owner_counted  # charged by gw1, killed before the sandbox saw the request
    assert {charges[r] for r in never_sent} <= {"failed"}, "a charge the sandbox never saw was not settled failed"
    assert abs(_spent(local_url) - CAP) < 1e-9, "the gateways' ledger did not spend exactly the owner's cap"
    assert len(cap_rows) == RELEASES - len(never_sent)
    assert sum(int(str(u)) for _, u in cap_rows) == len(cap_rows) * EPSILON * EPSILON_UNITS
    if moment == "before_the_sandbox":
        assert never_sent, "gw1 was killed holding no charge the sandbox had not seen"
    in_flight = owner_counted - released
    by = {n: sum(1 for x in got if x["ok"] and x["target"] == f"{gw.address}:{PORT}") for n, gw in gws.items()}
    print(f"\nmulti-host on PostgreSQL: race grant of {N} -> {N} answers {race_by}; {len(answered)} answers in all "
          f"({killed_at} before gw1 was killed, {open_at_kill} reservations open then; gw1 {by['gw1']}, "
          f"gw2 {by['gw2']}), {len(got) - len(answered)} refusals/failures; the owner's cap ledger "
          f"{len(cap_rows)} releases; {len(in_flight)} reached the sandbox unanswered "
          f"(gw1 killed) and stayed charged; {len(never_sent)} charged by gw1 never reached it and stayed charged; "
          f"{sum(1 for s in charges.values() if s == 'failed')} settled failed by gw2; "
          f"{time.monotonic() - started:.0f} s")
