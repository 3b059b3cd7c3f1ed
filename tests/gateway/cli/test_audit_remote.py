"""`pgw audit verify --target ... --as <auditor>`: an auditor verifies a running gateway's audit log from elsewhere.
The gateway's own check (VerifyAuditLog: chain, MACs, seals, ledger accounting) is shown, and the whole log is
fetched as signed pages (ExportAuditLog) and verified on the auditor's side against the gateway's public key,
fetched or pinned. A pinned key of another gateway fails; a non-auditor is refused; a tampered entry fails both
checks and the export is refused with AUDIT_LOG_INVALID. Against a real gateway with the shipped policy."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from privacy_gateway.v1 import audit_service_pb2 as au_pb
from privacy_gateway.v1 import audit_service_pb2_grpc as au_grpc

from gateway.cli.client import ClientIdentity, error_details, secure_channel
from gateway.identity import certs
from gateway.policy.policy import load_policy
from gateway.release.oversight import AUDIT_FILE
from gateway.rpc.server import Gateway, start_gateway
from gateway.settings import ROOT
from pgw_client import Client
from tests.gateway.cli.test_cli_messages import one_line_error, pgw
from tests.helpers import Env, fresh

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def shipped(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Path]]:
    """A gateway of its own (its log is tampered with below) with the shipped policy and catalog; its state dir."""
    state = tmp_path_factory.mktemp("audit-remote") / "state"
    policy = ROOT / "policies" / "operator.toml"
    certs.write_dev_pki(state / "certs", clients=load_policy(policy).identities)
    g = start_gateway(dataclasses.replace(env.settings, policy=policy, catalog=ROOT / "policies" / "catalog.toml",
                                          state_dir=state, tls_dir=state / "certs",
                                          sandbox_socket=state / "sandbox.sock"))
    yield g, state
    g.stop()


def _as(g: Gateway, state: Path, who: str) -> list[str]:
    return ["--target", f"127.0.0.1:{g.port}", "--tls-dir", str(state / "certs"), "--as", who]


def test_an_auditor_verifies_a_remote_log_then_a_tampered_one(shipped: tuple[Gateway, Path], tmp_path: Path) -> None:
    gw, state = shipped
    with Client(f"127.0.0.1:{gw.port}", tls_dir=state / "certs", identity="acme-bank-analyst") as c:
        for _ in range(3):
            c.query(fresh("SELECT COUNT(*) AS n FROM residents"), dataset="registry", purpose="credit-risk",
                    epsilon=0.1, request_id=str(uuid.uuid4()))
    auditor = _as(gw, state, "external-auditor")

    ok = pgw("audit", "verify", *auditor, "--page-entries", "2")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "OK: the gateway's check of its log" in ok.stdout
    assert "OK: the log accounts for 3 settled charges" in ok.stdout, ok.stdout
    assert "signed page(s)" in ok.stdout and "fetched from the gateway (KeyService)" in ok.stdout
    out = pgw("audit", "verify", *auditor, "--page-entries", "3", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is True and report["independent"]["pages"] >= 3 and report["independent"]["problems"] == []
    assert report["independent"]["entries"] == report["independent"]["through_seq"] >= 6
    assert report["gateway"]["charges"] == 3 and report["gateway"]["chain_ok"] is True

    other = tmp_path / "other.pem"
    other.write_bytes(Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    pinned = pgw("audit", "verify", *auditor, "--public-key", str(other))
    assert pinned.returncode == 1 and "FAILED: verified here" in pinned.stdout and "key_mismatch" in pinned.stdout

    one_line_error(pgw("audit", "verify", *_as(gw, state, "acme-bank-analyst")), 1, "PERMISSION_DENIED",
                   "ROLE_REQUIRED")

    with sqlite3.connect(state / AUDIT_FILE) as db:  # what an intruder with the file can do
        db.execute("DROP TRIGGER entries_no_update")
        db.execute("UPDATE entries SET consumer = 'someone-else' WHERE seq = 2")
    tampered = pgw("audit", "verify", *auditor)
    assert tampered.returncode == 1, tampered.stdout + tampered.stderr
    assert "FAILED: the gateway's check of its log" in tampered.stdout and "seq 2:" in tampered.stdout
    assert "FAILED: verified here" in tampered.stdout
    channel = secure_channel(f"127.0.0.1:{gw.port}", ClientIdentity.in_dir(state / "certs", "external-auditor"))
    with pytest.raises(grpc.RpcError) as info:
        au_grpc.AuditServiceStub(channel).ExportAuditLog(au_pb.ExportAuditLogRequest(), timeout=60)
    details = error_details(info.value)
    assert details.code == grpc.StatusCode.FAILED_PRECONDITION and details.reason == "AUDIT_LOG_INVALID"
