"""Unit tests for gateway.release.receipts and gateway.release.signing: signed receipts, keys on disk, canonical
JSON."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import query_service_pb2 as q_pb

from gateway.errors import ConfigError
from gateway.release.audit import seal_payload
from gateway.release.digests import normalize_sql, query_digest
from gateway.release.receipts import (
    MechanismUse,
    Receipt,
    attach_receipt,
    make_receipt,
    policy_version,
    release_bytes,
    verify_receipt,
)
from gateway.release.signing import Signer, canonical_json, load_or_create_hmac_key, verify

SQL = "SELECT sex, AVG(income)\n  FROM residents  -- by sex\n GROUP BY sex"


def _receipt(signer: Signer) -> Receipt:
    return make_receipt(
        signer, request_id="r-1", consumer="analyst", dataset="registry", purpose="testing",
        dataset_version="v7", policy_version="0123456789abcdef", query_digest=query_digest(normalize_sql(SQL)),
        mechanisms=[MechanismUse("avg_income", "sum", "laplace", 200000.0, 800000.0, 0.25)],
        epsilon=0.5, delta=0.0, remaining_epsilon=9.5, remaining_delta=0.0, release_digest="ab" * 32,
        time="2025-01-01T00:00:00.000000Z",
    )


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def test_round_trip() -> None:
    """A receipt verifies under its key, survives the proto and client-file forms, and has every field."""
    signer = Signer.generate()
    receipt = _receipt(signer)
    assert verify_receipt(receipt.payload_json.encode(), receipt.signature, signer.public_pem)
    payload = receipt.payload()
    assert payload["type"] == "privacy_gateway.receipt" and payload["version"] == 1
    assert payload["key_id"] == signer.key_id == receipt.key_id
    assert payload["cost"] == {"epsilon": "0.5", "delta": "0.0"}  # floats as repr strings
    assert payload["mechanisms"] == [{
        "output": "avg_income", "component": "sum", "mechanism": "laplace",
        "sensitivity": "200000.0", "scale": "800000.0", "epsilon": "0.25",
    }]
    assert receipt.payload_json.encode() == canonical_json(payload)
    assert Receipt.from_proto(receipt.to_proto()) == receipt
    assert Receipt.from_client_json(receipt.to_client_json()) == receipt


def test_any_one_bit_change_breaks_verification() -> None:
    """Every single-bit change of the payload or the signature fails verification."""
    signer = Signer.generate()
    receipt = _receipt(signer)
    data = receipt.payload_json.encode()
    for bit in range(len(data) * 8):
        assert not verify_receipt(_flip(data, bit), receipt.signature, signer.public_pem), bit
    for bit in range(len(receipt.signature) * 8):
        assert not verify_receipt(data, _flip(receipt.signature, bit), signer.public_pem), bit


def test_wrong_key_fails() -> None:
    """Another gateway's key, garbage PEM and a non-Ed25519 key all fail."""
    receipt = _receipt(Signer.generate())
    data = receipt.payload_json.encode()
    assert not verify_receipt(data, receipt.signature, Signer.generate().public_pem)
    assert not verify_receipt(data, receipt.signature, b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert not verify_receipt(data, receipt.signature, ec_pem)


def test_seal_signature_is_not_a_receipt() -> None:
    """Domain separation: a valid signature over a seal payload does not verify as a receipt."""
    signer = Signer.generate()
    payload = seal_payload(5, "00" * 32, "2025-01-01T00:00:00.000000Z", signer.key_id)
    signature = signer.sign(payload)
    assert verify(signer.public_pem, payload, signature)
    assert not verify_receipt(payload, signature, signer.public_pem)


def _response() -> q_pb.RunQueryResponse:
    return q_pb.RunQueryResponse(
        columns=[q_pb.ResultColumn(name="n", noisy=True, aggregate="count")],
        rows=[q_pb.Row(cells=[q_pb.Cell(int64_value=2981)])],
        plan=q_pb.QueryPlanInfo(
            table="residents",
            releases=[q_pb.ReleaseCost(output="n", component="count", mechanism="discrete_laplace",
                                       sensitivity=1.0, scale=2.0,
                                       privacy_loss=common_pb.PrivacyLoss(epsilon=0.5))],
        ),
        privacy_cost=common_pb.PrivacyLoss(epsilon=0.5),
        budget=common_pb.BudgetStatus(dataset="registry", purpose="testing",
                                      remaining=common_pb.PrivacyLoss(epsilon=9.5)),
        request_id="r-9",
        dataset_version="v7",
    )


def test_attach_receipt(tmp_path: Path) -> None:
    """attach_receipt signs the response's facts, sets response.receipt, and survives a replay."""
    signer = Signer.generate()
    policy = tmp_path / "operator.toml"
    policy.write_text("schema = 'x'\n")
    response = _response()
    receipt = attach_receipt(
        response, signer, consumer="analyst", dataset="registry", purpose="testing",
        policy_version=policy_version(policy), normalized_query=normalize_sql(SQL),
    )
    assert Receipt.from_proto(response.receipt) == receipt
    payload = receipt.payload()
    assert payload["request_id"] == "r-9" and payload["dataset_version"] == "v7"
    assert payload["policy_version"] == hashlib.sha256(policy.read_bytes()).hexdigest()[:16]
    assert payload["query_digest"] == hashlib.sha256(b"SELECT sex, AVG(income) FROM residents GROUP BY sex").hexdigest()
    assert SQL not in receipt.payload_json and "residents" not in receipt.payload_json
    assert payload["mechanisms"][0]["scale"] == "2.0"
    assert payload["budget_remaining"]["epsilon"] == "9.5"
    # The release digest ignores the receipt itself and the replay flag, so a replay still matches.
    replay = q_pb.RunQueryResponse.FromString(response.SerializeToString())
    replay.replayed = True
    assert hashlib.sha256(release_bytes(replay)).hexdigest() == payload["release_digest"]
    assert verify_receipt(replay.receipt.payload_json.encode(), replay.receipt.signature, signer.public_pem)


def test_keys_on_disk(tmp_path: Path) -> None:
    """The key pair is created once (0600 PKCS8 PEM + public PEM), reloaded, and its id is SHA-256[:16]."""
    state = tmp_path / "state"
    signer = Signer.load_or_create(state)
    key_file, pub_file = state / "keys" / "signing.key", state / "keys" / "signing.pub"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pub_file.read_bytes() == signer.public_pem
    raw = serialization.load_pem_public_key(signer.public_pem).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert signer.key_id == hashlib.sha256(raw).hexdigest()[:16]
    again = Signer.load_or_create(state)
    assert again.key_id == signer.key_id
    assert verify(signer.public_pem, b"x", again.sign(b"x"))
    hmac_key = load_or_create_hmac_key(state)
    assert len(hmac_key) == 32 and load_or_create_hmac_key(state) == hmac_key
    os.chmod(key_file, 0o644)
    with pytest.raises(ConfigError, match="0600"):
        Signer.load_or_create(state)


def test_canonical_json() -> None:
    """Sorted keys, no whitespace, UTF-8, floats as repr strings; unsafe values refused."""
    assert canonical_json({"b": 0.1, "a": [1, True, None, "é"]}) == '{"a":[1,true,null,"é"],"b":"0.1"}'.encode()
    assert json.loads(canonical_json({"x": 1e21})) == {"x": "1e+21"}
    for bad in ({"x": 2**53}, {1: "a"}, {"x": b"bytes"}, {"x": "\ud800"}):
        with pytest.raises(ValueError):
            canonical_json(bad)
