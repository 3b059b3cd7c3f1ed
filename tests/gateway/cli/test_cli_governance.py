"""Unit tests for gateway.cli.audit and gateway.release.oversight: the operator and auditor commands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from gateway.cli import audit as cli_governance
from gateway.release.oversight import Oversight, outcome_for
from gateway.release.receipts import attach_receipt, release_bytes
from tests.gateway.release.test_receipts import _response


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Parse with a parser that only has the governance commands, run, and capture stdout."""
    parser = argparse.ArgumentParser(prog="pgw")
    cli_governance.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code = int(args.func(args))
    return code, capsys.readouterr().out


@pytest.fixture
def gov(tmp_path: Path) -> Oversight:
    """A governance bundle on a fresh state dir with a policy file, 7 RPCs recorded."""
    policy = tmp_path / "operator.toml"
    policy.write_text("schema = 'privacy_gateway.operator.v1'\n")
    g = Oversight.open(tmp_path / "state", policy, seal_every=5)
    for i in range(7):
        g.record_rpc(service="QueryService", method="RunQuery", code="OK" if i % 2 else "INVALID_ARGUMENT",
                     duration_s=0.01, request_id=f"r{i}", consumer="analyst", dataset="registry",
                     purpose="testing", normalized_query="SELECT COUNT(*) FROM residents",
                     epsilon=0.5 if i % 2 else 0.0, released=b"answer" if i % 2 else None)
    return g


def test_outcomes() -> None:
    """OK is answered, pre-execution refusals are refused, the rest failed."""
    assert [outcome_for(c) for c in ("OK", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL")] == [
        "answered", "refused", "refused", "failed", "failed",
    ]


def test_record_rpc_counts_and_audits(gov: Oversight) -> None:
    """record_rpc appends an audit entry and counts the request."""
    entries = gov.audit.entries()
    assert [e.outcome for e in entries[:3]] == ["refused", "answered", "refused"]
    assert entries[1].released_digest and not entries[0].released_digest
    assert 'pgw_requests_total{service="QueryService",method="RunQuery",outcome="answered",code="OK"} 3' in (
        gov.metrics.render()
    )


def test_audit_verify_export_and_keys(gov: Oversight, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """pgw audit verify / export / verify-export and pgw keys export, readable and --json."""
    state = str(tmp_path / "state")
    gov.close()  # clean shutdown seals entry 7
    code, out = run(["audit", "verify", "--state-dir", state, "--require-sealed"], capsys)
    assert code == 0 and out.startswith("OK: 7 entries") and "sealed through seq 7" in out
    code, out = run(["keys", "export", "--state-dir", state, "--out", str(tmp_path / "pub.pem")], capsys)
    assert code == 0 and f"wrote public key {gov.signer.key_id}" in out
    code, out = run(["audit", "export", "--state-dir", state, "--from", "2", "--to", "6",
                     "--out", str(tmp_path / "x.jsonl"), "--json"], capsys)
    assert code == 0 and json.loads(out)["key_id"] == gov.signer.key_id
    code, out = run(["audit", "verify-export", str(tmp_path / "x.jsonl"),
                     "--public-key", str(tmp_path / "pub.pem"), "--json"], capsys)
    assert code == 0 and json.loads(out)["ok"] is True
    data = (tmp_path / "x.jsonl").read_bytes().replace(b'"consumer":"analyst"', b'"consumer":"analyst2"', 1)
    (tmp_path / "x.jsonl").write_bytes(data)
    code, out = run(["audit", "verify-export", str(tmp_path / "x.jsonl"), "--public-key", str(tmp_path / "pub.pem")],
                    capsys)
    assert code == 1 and out.startswith("FAILED") and "first bad seq: 2" in out


def test_receipt_verify_command(gov: Oversight, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """pgw receipt verify accepts a client receipt file and rejects a tampered one."""
    response = _response()
    receipt = attach_receipt(response, gov.signer, consumer="analyst", dataset="registry", purpose="testing",
                             policy_version=gov.policy_version, normalized_query="SELECT COUNT(*) FROM residents")
    assert release_bytes(response)
    (tmp_path / "pub.pem").write_bytes(gov.signer.public_pem)
    (tmp_path / "r.json").write_text(receipt.to_client_json())
    argv = ["receipt", "verify", "--receipt", str(tmp_path / "r.json"), "--public-key", str(tmp_path / "pub.pem")]
    code, out = run(argv, capsys)
    assert code == 0 and out.startswith("VALID release receipt, key ") and ": r-9: analyst" in out
    assert "discrete_laplace scale 2.0" in out
    code, out = run([*argv, "--json"], capsys)
    assert code == 0 and json.loads(out)["payload"]["consumer"] == "analyst"
    forged = json.loads(receipt.to_client_json())
    forged["payload_json"] = forged["payload_json"].replace('"epsilon":"0.5"', '"epsilon":"0.05"')
    (tmp_path / "r.json").write_text(json.dumps(forged))
    code, out = run(argv, capsys)
    assert code == 1 and out.startswith("INVALID")
