"""Shared fixtures: a small generated registry, real certificates, a real sandbox process, a real gateway."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.exampledata.generate import generate
from gateway.identity import certs
from gateway.rpc.server import Gateway, start_gateway
from gateway.settings import ROOT, load_settings
from gateway.storage.pg import PgDatabase
from tests.helpers import CLIENTS, PEOPLE, TEST_POLICY, Env, Stubs, channel_for, stubs_for
from tests.pgcluster import PgCluster, start_cluster


@pytest.fixture(scope="session")
def env() -> Iterator[Env]:
    """Data, certificates and settings in a short temporary directory (Unix socket paths are short)."""
    root = Path(tempfile.mkdtemp(prefix="pgw-"))
    data_dir = root / "data"
    generate(data_dir, PEOPLE, seed=11)
    tls_dir = root / "tls"
    certs.write_dev_pki(tls_dir, clients=CLIENTS)
    foreign = root / "foreign"
    certs.write_dev_pki(foreign, clients=["analyst"])  # same name, another CA
    policy = root / "operator.toml"
    policy.write_text(TEST_POLICY)
    settings = load_settings(
        {
            "listen": "127.0.0.1:0",
            "policy": policy,
            "catalog": ROOT / "policies" / "catalog.toml",
            "data_dir": data_dir,
            "state_dir": root / "state",
            "tls_dir": tls_dir,
            "query_timeout_ms": 5000,
            "sandbox_memory_limit": "1GiB",
        }
    )
    yield Env(root, data_dir, tls_dir, foreign, settings)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def gateway(env: Env) -> Iterator[Gateway]:
    """One real gateway (with its real sandbox process) for the session."""
    gw = start_gateway(env.settings)
    yield gw
    gw.stop()


@pytest.fixture
def analyst(env: Env, gateway: Gateway) -> Iterator[Stubs]:
    """Stubs for the consumer with a large budget."""
    ch = channel_for(env, gateway.port, "analyst")
    yield stubs_for(ch)
    ch.close()




@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A throwaway PostgreSQL cluster for the session (tests/pgcluster.py); skips when none can start."""
    cluster = start_cluster()
    if isinstance(cluster, str):
        pytest.skip(f"PostgreSQL tests need a server: {cluster}")
    yield cluster
    cluster.stop()


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    return pg_cluster.database()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], Path | PgDatabase]:
    """Where a store lives, on each backend: a SQLite file under tmp_path (by name) or one fresh PostgreSQL
    database per test (every name is the same database, as the gateway's stores share one)."""
    if request.param == "sqlite":
        return lambda name: tmp_path / name
    db = PgDatabase(request.getfixturevalue("pg_url"))
    return lambda name: db
