"""Test helpers: the test policy, environment paths, mTLS channels and stubs."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import duckdb
import grpc
from privacy_gateway.v1 import budget_service_pb2_grpc as b_grpc
from privacy_gateway.v1 import catalog_service_pb2_grpc as cat_grpc
from privacy_gateway.v1 import query_service_pb2_grpc as q_grpc

from gateway.settings import Settings
from sandbox.plans.bounds import expression_bounds
from sandbox.protocol.messages import (
    BOUNDED_KINDS,
    Aggregate,
    AggregateKind,
    Column,
    GroupKey,
    TableInfo,
)

PEOPLE = 3000

# Verification grants of the test policy (tests/gateway/products/verification/test_verification.py).
VERIFICATION_POLICY = """
[verification]
period = "day"
max_checks_per_consumer_per_period = 10000000
alert_not_found_per_window = 20
alert_window_seconds = 3600
alert_distinct_parameters_per_subject = 3

[[verification_grants]]
consumer = "analyst"
dataset = "registry"
template = "identity_match"
purpose = "kyc"
max_checks_per_period = 10000000
max_checks_per_subject_per_period = 1000

[[verification_grants]]
consumer = "analyst"
dataset = "registry"
template = "income_at_least"
purpose = "kyc"
max_checks_per_period = 10000000
max_checks_per_subject_per_period = 3

[[verification_grants]]
consumer = "analyst"
dataset = "registry"
template = "insured_months_at_least"
purpose = "kyc"
max_checks_per_period = 10000000
max_checks_per_subject_per_period = 1000

[[verification_grants]]
consumer = "analyst"
dataset = "enterprises"
template = "enterprise_active"
purpose = "kyc"
max_checks_per_period = 10000000
max_checks_per_subject_per_period = 1000

[[verification_grants]]
consumer = "racer"
dataset = "registry"
template = "income_at_least"
purpose = "racing"
max_checks_per_period = 10000000
max_checks_per_subject_per_period = 3
"""

# The test operator policy: small budgets so exhaustion is easy to reach.
TEST_POLICY = """
schema = "privacy_gateway.operator.v1"

[consumers.analyst]
organization = "Test Bank"

[consumers.planner]
organization = "Test Institute"

[consumers.racer]
organization = "Concurrency Tests"

[consumers.restarter]
organization = "Restart Tests"

[consumers.zanalyst]
organization = "zCDP Tests"

[consumers.zracer]
organization = "zCDP Concurrency Tests"

[[grants]]
consumer = "analyst"
dataset = "registry"
purpose = "testing"
privacy_definition = "pure_dp"
epsilon = 1000.0
delta = 0.0
max_epsilon_per_query = 100.0

[[grants]]
consumer = "analyst"
dataset = "registry"
purpose = "approx-testing"
privacy_definition = "approx_dp"
epsilon = 1000.0
delta = 1e-3
max_epsilon_per_query = 100.0

[[grants]]
consumer = "planner"
dataset = "registry"
purpose = "planning"
privacy_definition = "pure_dp"
epsilon = 1.0
delta = 0.0
max_epsilon_per_query = 0.5

[[grants]]
consumer = "racer"
dataset = "registry"
purpose = "racing"
privacy_definition = "pure_dp"
epsilon = 1.0
delta = 0.0
max_epsilon_per_query = 1.0

[[grants]]
consumer = "restarter"
dataset = "registry"
purpose = "restarting"
privacy_definition = "pure_dp"
epsilon = 1.0
delta = 0.0
max_epsilon_per_query = 1.0

[[grants]]
consumer = "zanalyst"
dataset = "registry"
purpose = "zcdp-testing"
privacy_definition = "zcdp"
rho = 2.0
delta = 1e-6
max_rho_per_query = 0.5

[[grants]]
consumer = "zanalyst"
dataset = "registry"
purpose = "zcdp-small"
privacy_definition = "zcdp"
rho = 0.03
delta = 1e-6
max_rho_per_query = 0.02

[[grants]]
consumer = "zracer"
dataset = "registry"
purpose = "zcdp-racing"
privacy_definition = "zcdp"
rho = 0.08
delta = 1e-6
max_rho_per_query = 0.01
""" + VERIFICATION_POLICY

# stranger: valid CA, no policy entry
CLIENTS = ["analyst", "planner", "racer", "restarter", "zanalyst", "zracer", "stranger"]


@dataclass(frozen=True)
class Env:
    """Paths of the test environment."""

    root: Path
    data_dir: Path
    tls_dir: Path
    foreign_tls_dir: Path
    settings: Settings

    def exact(self, sql: str) -> list[tuple[object, ...]]:
        """Exact answers, computed by the test straight from the files (the gateway never does this)."""
        con = duckdb.connect()
        for name in ("residents", "social_insurance", "enterprises"):
            con.execute(
                f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{self.data_dir / name}.parquet')"
            )
        return con.execute(sql).fetchall()


def channel_for(env: Env, port: int, name: str, tls_dir: Path | None = None) -> grpc.Channel:
    """An mTLS channel with client `name`'s certificate."""
    d = tls_dir or env.tls_dir
    creds = grpc.ssl_channel_credentials(
        root_certificates=(env.tls_dir / "ca.crt").read_bytes(),
        private_key=(d / f"{name}.key").read_bytes(),
        certificate_chain=(d / f"{name}.crt").read_bytes(),
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", creds)


@dataclass
class Stubs:
    """The generated stubs on one channel, as a client would use them."""

    channel: grpc.Channel
    query: q_grpc.QueryServiceStub
    catalog: cat_grpc.CatalogServiceStub
    budget: b_grpc.BudgetServiceStub


def stubs_for(channel: grpc.Channel) -> Stubs:
    """Stubs on a channel."""
    return Stubs(
        channel,
        q_grpc.QueryServiceStub(channel),
        cat_grpc.CatalogServiceStub(channel),
        b_grpc.BudgetServiceStub(channel),
    )


def isolated_settings(env: Env, name: str) -> Settings:
    """Settings for a second gateway with its own state directory (restart tests)."""
    state = env.root / f"state-{name}"
    return replace(env.settings, state_dir=state, sandbox_socket=state / "sandbox.sock")


_SEQ = iter(range(10**9))


def fresh(sql: str) -> str:
    """`sql` with an always-true filter that makes it a distinct query (the release cache would
    otherwise answer a repeated query with the earlier release). `sql` must have no WHERE clause."""
    n = next(_SEQ)
    head, sep, tail = sql.partition(" GROUP BY ")
    return f"{head} WHERE birth_year < {3000 + n}{sep}{tail}"


def make_agg(
    table: TableInfo,
    kind: AggregateKind,
    column: str | None = None,
    weight: float = 1.0,
    quantile: float | None = None,
) -> Aggregate:
    """An aggregate over a plain column with the bounds `sandbox.plans.bounds` derives (or (0, 1) when there
    are none, for plans the sandbox must refuse)."""
    arg = None if column is None else Column(column)
    lower = upper = None
    if kind in BOUNDED_KINDS:
        derived = None if arg is None else expression_bounds(arg, table)
        lower, upper = (derived[0], derived[1]) if derived else (0.0, 1.0)
    if kind is AggregateKind.QUANTILE and quantile is None:
        quantile = 0.5
    return Aggregate(kind, arg, weight, lower, upper, quantile)


def make_keys(table: TableInfo, names: tuple[str, ...]) -> tuple[GroupKey, ...]:
    """Group keys over plain columns with their declared domains (None when there is none)."""
    out = []
    for n in names:
        col = table.column(n)
        out.append(GroupKey(n, Column(n), None if col is None else col.domain))
    return tuple(out)
