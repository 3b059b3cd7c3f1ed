"""Helpers for the governance tests: a v2 policy, its certificates, stubs and calls."""

from __future__ import annotations

import secrets
import zlib
from pathlib import Path
from typing import Any

import grpc
import pytest
from privacy_gateway.v1 import admin_service_pb2_grpc as a_grpc
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import query_service_pb2 as q_pb
from privacy_gateway.v1 import query_service_pb2_grpc as q_grpc

from gateway.cli.client import ErrorDetails, error_details

POLICY_V2 = """
schema = "privacy_gateway.operator.v2"

[organizations.bank]
name = "Bank"
[organizations.bank.members.analyst]
roles = ["consumer"]
[organizations.bank.members.intern]
roles = ["consumer"]

[organizations.temps]
name = "Temporary Staff"
[organizations.temps.members.temp1]
roles = ["consumer"]
[organizations.temps.members.temp2]
roles = ["consumer"]

[organizations.ops]
name = "Ops"
[organizations.ops.members.ops-admin]
roles = ["operator"]

[organizations.bureau]
name = "Bureau"
datasets = ["registry"]
[organizations.bureau.members.steward]
roles = ["data_owner"]

[purposes.credit]
use_class = "commercial"
currency = "EUR"
price_per_request_unit = 0.5
price_per_epsilon = 20.0

[purposes.work]
use_class = "public_welfare"

[[grants]]
organization = "bank"
dataset = "registry"
purpose = "credit"
privacy_definition = "pure_dp"
epsilon = 3.0
delta = 0.0
max_epsilon_per_query = 1.0
period = "month"
[grants.members.intern]
epsilon = 1.0
delta = 0.0

[[grants]]
organization = "temps"
dataset = "registry"
purpose = "work"
privacy_definition = "pure_dp"
epsilon = 100.0
delta = 0.0
max_epsilon_per_query = 1.0
period = "day"

[[alerts]]
rule = "refusal_burst"
count = 3
window_s = 60
"""

IDENTITIES = ["analyst", "intern", "temp1", "temp2", "ops-admin", "steward", "outsider"]
COUNT_SQL = "SELECT COUNT(*) FROM residents"


def channel(tls_dir: Path, port: int, name: str) -> grpc.Channel:
    """An mTLS channel as `name`."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=(tls_dir / "ca.crt").read_bytes(),
        private_key=(tls_dir / f"{name}.key").read_bytes(),
        certificate_chain=(tls_dir / f"{name}.crt").read_bytes(),
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", creds)


def admin(ch: grpc.Channel) -> Any:
    """AdminService stub."""
    return a_grpc.AdminServiceStub(ch)


def distinct_count_sql(request_id: str = "") -> str:
    """COUNT_SQL made distinct by an always-true filter (the release cache answers repeats for free);
    deterministic per request id so a retry repeats the same request."""
    n = zlib.crc32(request_id.encode()) if request_id else secrets.randbits(40)
    return f"{COUNT_SQL} WHERE birth_year > {-1 - n}"


def query(ch: grpc.Channel, epsilon: float, purpose: str, *, request_id: str = "",
          sql: str | None = None, timeout: float = 60) -> q_pb.RunQueryResponse:
    """RunQuery on the registry (a distinct COUNT unless `sql` is given)."""
    sql = sql or distinct_count_sql(request_id)
    resp: q_pb.RunQueryResponse = q_grpc.QueryServiceStub(ch).RunQuery(q_pb.RunQueryRequest(
        dataset="registry", sql=sql, purpose=purpose, request_id=request_id,
        privacy_loss=common_pb.PrivacyLoss(epsilon=epsilon)), timeout=timeout)
    return resp


def fails(call: Any, *args: Any, **kwargs: Any) -> ErrorDetails:
    """The ErrorDetails of a call that must fail."""
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return error_details(info.value)
