"""Gateways reaching a sandbox on the data owner's host over mutual TLS: two gateways share one sandbox and
its cap ledger stays exact under concurrent load; a gateway rides out the sandbox's restart."""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from gateway.identity import certs
from gateway.rpc.server import Gateway, start_gateway
from sandbox.pricing.periods import EPSILON_UNITS
from sandbox.protocol.owner import CapUsageReply
from tests.gateway.budgets.test_owner_caps import IDENTITIES, POLICY, catalog_text, pquery
from tests.gov_helpers import channel
from tests.helpers import Env
from tests.net_helpers import OwnerSandbox, owner_pki, remote_settings

pytestmark = pytest.mark.integration

N = 10  # the owner's cap: exactly N releases of epsilon 1


@pytest.fixture
def shared(env: Env) -> Iterator[tuple[OwnerSandbox, Path, Path]]:
    """A standalone sandbox whose registry cap is epsilon N per month, its PKI, and the consumers' PKI."""
    root = Path(tempfile.mkdtemp(prefix="pgw-rs-"))
    tls = owner_pki(root)
    consumers = root / "tls"
    certs.write_dev_pki(consumers, clients=IDENTITIES)
    (root / "operator.toml").write_text(POLICY)
    catalog = root / "catalog.toml"
    catalog.write_text(catalog_text(f'epsilon_per_period = {N}.0\ndelta_per_period = 1e-5\nperiod = "month"'))
    sandbox = OwnerSandbox(catalog, env.data_dir, tls, root / "owner-state").start()
    yield sandbox, root, consumers
    sandbox.stop()
    shutil.rmtree(root, ignore_errors=True)


def _gateway(env: Env, sandbox: OwnerSandbox, root: Path, consumers: Path, name: str, **kw: object) -> Gateway:
    settings = remote_settings(env.settings, root / name, sandbox.port, sandbox.tls, name)
    return start_gateway(replace(settings, policy=root / "operator.toml", catalog=root / "unused.toml",
                                 tls_dir=consumers, **kw))  # type: ignore[arg-type]


def _count(db_path: Path, sql: str) -> int:
    db = sqlite3.connect(db_path)
    try:
        return int(db.execute(sql).fetchone()[0])
    finally:
        db.close()


def _released(root: Path, name: str) -> int:
    """Released charges in gateway `name`'s ledger."""
    return _count(root / name / "ledger.sqlite3", "SELECT count(*) FROM charges WHERE status = 'released'")


def _wait(pred: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def test_two_gateways_share_one_sandbox_and_its_cap_allows_exactly_n(
        env: Env, shared: tuple[OwnerSandbox, Path, Path]) -> None:
    """Gateways gw1 and gw2 (own state, own ledgers, neither starts a sandbox) send 2 x 12 concurrent releases
    of epsilon 1 against an owner's cap of epsilon 10: exactly 10 are answered, every other is refused
    RESOURCE_EXHAUSTED; the owner's cap ledger counts exactly 10, and the two ledgers hold exactly 10 released
    charges between them."""
    sandbox, root, consumers = shared
    gws = [_gateway(env, sandbox, root, consumers, name) for name in ("gw1", "gw2")]
    try:
        assert all(gw.sandbox_process is None for gw in gws)
        chans = [channel(consumers, gw.port, "analyst") for gw in gws]

        def one(i: int) -> grpc.StatusCode:
            try:
                pquery(chans[i % 2], 1.0)
            except grpc.RpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        with ThreadPoolExecutor(24) as pool:
            codes = list(pool.map(one, range(24)))
        for ch in chans:
            ch.close()
        assert codes.count(grpc.StatusCode.OK) == N
        assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        reply = sandbox.client().cap_usage(("registry",))
        assert isinstance(reply, CapUsageReply)
        usage = reply.usage("registry")
        assert usage is not None and usage.period.epsilon_units == N * EPSILON_UNITS
        assert _count(sandbox.state / "caps.sqlite3", "SELECT count(*) FROM cap_charges") == N
        assert _released(root, "gw1") + _released(root, "gw2") == N
    finally:
        for gw in gws:
            gw.stop()


@pytest.mark.slow
def test_gateway_rides_out_the_remote_sandbox_restarting(
        env: Env, shared: tuple[OwnerSandbox, Path, Path]) -> None:
    """The sandbox is SIGKILLed: the gateway reports it down, a query meanwhile fails UNAVAILABLE with nothing
    charged; the owner restarts it on the same port and the gateway reconnects (backoff probes) by itself."""
    sandbox, root, consumers = shared
    gw = _gateway(env, sandbox, root, consumers, "gw1", health_interval_ms=200)
    try:
        assert gw.supervisor is not None
        with channel(consumers, gw.port, "analyst") as ch:
            pquery(ch, 1.0)
            sandbox.kill()
            assert _wait(lambda: gw.supervisor is not None and not gw.supervisor.healthy, 10)
            with pytest.raises(grpc.RpcError) as info:
                pquery(ch, 1.0)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            assert _released(root, "gw1") == 1
            sandbox.start()
            assert _wait(lambda: gw.supervisor is not None and gw.supervisor.healthy, 20)
            pquery(ch, 1.0)
        assert _released(root, "gw1") == 2
        [recovery] = gw.supervisor.recoveries
        assert recovery.cause.startswith("unreachable") and recovery.seconds > 0
    finally:
        gw.stop()
