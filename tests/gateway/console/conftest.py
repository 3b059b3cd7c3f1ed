"""A real gateway (real sandbox process, ledger, audit log) with the console and the public page listening,
and one client certificate per role of the console policy."""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from gateway.console import start_console
from gateway.identity import certs
from gateway.rpc.server import Gateway, start_gateway
from tests.helpers import Env

POLICY = """
schema = "privacy_gateway.operator.v2"

[organizations.bank]
name = "Bank"
[organizations.bank.members.analyst]
roles = ["consumer"]
[organizations.bank.members.intern]
roles = ["consumer"]
[organizations.city]
name = "City Institute"
[organizations.city.members.planner]
roles = ["consumer"]
[organizations.ops]
name = "Operations"
[organizations.ops.members.ops-admin]
roles = ["operator"]
[organizations.bureau]
name = "Data Bureau"
datasets = ["registry"]
[organizations.bureau.members.steward]
roles = ["data_owner"]
[organizations.audit]
name = "Audit Office"
[organizations.audit.members.auditor]
roles = ["auditor"]

[purposes.credit]
use_class = "commercial"
currency = "EUR"
price_per_request_unit = 0.5
price_per_epsilon = 20.0
description = "credit-risk models"
[purposes.planning]
use_class = "public_welfare"
description = "urban planning"

[[grants]]
organization = "bank"
dataset = "registry"
purpose = "credit"
privacy_definition = "pure_dp"
epsilon = 1000.0
delta = 0.0
max_epsilon_per_query = 10.0
period = "month"
[grants.members.intern]
epsilon = 2.0
delta = 0.0

[[grants]]
organization = "city"
dataset = "registry"
purpose = "planning"
privacy_definition = "pure_dp"
epsilon = 100.0
delta = 0.0
max_epsilon_per_query = 10.0
period = "month"

[[alerts]]
rule = "grant_near_exhaustion"
threshold = 0.5
"""

IDENTITIES = ["analyst", "intern", "planner", "ops-admin", "steward", "auditor", "outsider"]


@dataclass
class ConsoleEnv:
    """The running gateway, its console ports and the certificates."""

    gw: Gateway
    tls: Path
    root: Path

    @property
    def url(self) -> str:
        assert self.gw.console is not None
        return f"https://127.0.0.1:{self.gw.console.port}"

    @property
    def public_url(self) -> str:
        assert self.gw.console is not None
        return f"https://127.0.0.1:{self.gw.console.public_port}"

    def channel(self, who: str) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=(self.tls / "ca.crt").read_bytes(),
            private_key=(self.tls / f"{who}.key").read_bytes(),
            certificate_chain=(self.tls / f"{who}.crt").read_bytes())
        return grpc.secure_channel(f"127.0.0.1:{self.gw.port}", creds)


@pytest.fixture(scope="package")
def console_env(env: Env) -> Iterator[ConsoleEnv]:
    root = Path(tempfile.mkdtemp(prefix="pgw-console-"))
    tls = root / "tls"
    certs.write_dev_pki(tls, clients=IDENTITIES)  # outsider: our CA, in no policy
    policy = root / "operator.toml"
    policy.write_text(POLICY)
    state = root / "state"
    settings = dataclasses.replace(
        env.settings, policy=policy, state_dir=state, tls_dir=tls, sandbox_socket=state / "sandbox.sock",
        console_listen="127.0.0.1:0", console_public_listen="127.0.0.1:0")
    gw = start_gateway(settings)
    start_console(gw, settings)
    yield ConsoleEnv(gw, tls, root)
    gw.stop()
    shutil.rmtree(root, ignore_errors=True)
