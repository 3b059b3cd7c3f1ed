"""KeyService over the real mTLS server, the governance objects the server opens, and the one key every receipt
is signed with."""

from __future__ import annotations

import json

import grpc
import pytest
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import query_service_pb2 as q_pb
from privacy_gateway.v1 import query_service_pb2_grpc as q_grpc
from privacy_gateway.v1 import receipt_pb2
from privacy_gateway.v1 import receipt_pb2_grpc as key_grpc
from privacy_gateway.v1 import verification_service_pb2 as v_pb
from privacy_gateway.v1 import verification_service_pb2_grpc as v_grpc

from gateway.products.verification.receipts import ReceiptData
from gateway.products.verification.receipts import verify_receipt as verify_check_receipt
from gateway.release.receipts import verify_receipt as verify_query_receipt
from gateway.release.signing import Signer, public_key_id
from gateway.rpc.server import Gateway
from tests.helpers import Env, channel_for, fresh

pytestmark = pytest.mark.integration


def test_get_public_key(env: Env, gateway: Gateway) -> None:
    """GetPublicKey returns the key in <state_dir>/keys/signing.pub and its id to any member of the policy
    (whatever its role); a certificate of the CA whose name is in no policy is UNAUTHENTICATED, like on every
    other RPC."""
    channel = channel_for(env, gateway.port, "stranger")
    try:
        with pytest.raises(grpc.RpcError) as info:
            key_grpc.KeyServiceStub(channel).GetPublicKey(receipt_pb2.GetPublicKeyRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        channel.close()
    channel = channel_for(env, gateway.port, "planner")
    try:
        resp = key_grpc.KeyServiceStub(channel).GetPublicKey(receipt_pb2.GetPublicKeyRequest(), timeout=10)
    finally:
        channel.close()
    pub = (env.settings.state_dir / "keys" / "signing.pub").read_bytes()
    assert resp.public_key_pem.encode() == pub
    assert resp.key_id == public_key_id(pub) and resp.algorithm == "Ed25519"
    assert gateway.oversight is not None
    assert gateway.oversight.signer.key_id == resp.key_id
    assert gateway.oversight.audit.path == env.settings.state_dir / "ledger.sqlite3"
    assert gateway.oversight.audit.verify().ok


def test_every_product_receipt_verifies_with_the_key_service_key(env: Env, gateway: Gateway) -> None:
    """A query's receipt and a verification's Merkle-tree receipt are both signed by the one key KeyService
    publishes, and both name it by the same key id; neither verifies under another key."""
    with channel_for(env, gateway.port, "analyst") as channel:
        key = key_grpc.KeyServiceStub(channel).GetPublicKey(receipt_pb2.GetPublicKeyRequest(), timeout=10)
        answer = q_grpc.QueryServiceStub(channel).RunQuery(q_pb.RunQueryRequest(
            dataset="registry", purpose="testing", sql=fresh("SELECT COUNT(*) FROM residents"),
            privacy_loss=common_pb.PrivacyLoss(epsilon=0.5)), timeout=30)
        templates = v_grpc.VerificationServiceStub(channel).ListTemplates(v_pb.ListTemplatesRequest(), timeout=10)
        (subject, name), = env.exact("SELECT id_number, name FROM residents ORDER BY person_id LIMIT 1")
        check = v_grpc.VerificationServiceStub(channel).Verify(v_pb.VerifyRequest(
            dataset="registry", template="identity_match", purpose="kyc", subject=subject,
            parameters={"name": v_pb.ParamValue(string_value=name)}), timeout=30)
    other = Signer.generate().public_pem
    query_receipt = answer.receipt
    assert query_receipt.key_id == key.key_id
    assert verify_query_receipt(query_receipt.payload_json.encode(), query_receipt.signature, key.public_key_pem)
    assert not verify_query_receipt(query_receipt.payload_json.encode(), query_receipt.signature, other)
    check_receipt = ReceiptData.from_pb(check.receipt)
    assert check_receipt.key_id == key.key_id
    assert json.loads(check_receipt.payload)["key_id"] == key.key_id
    assert verify_check_receipt(check_receipt, key.public_key_pem)
    assert not verify_check_receipt(check_receipt, other)
    assert (templates.receipt_key_id, templates.receipt_public_key_pem) == (key.key_id, key.public_key_pem)
    assert not (env.settings.state_dir / "verification-signing.key").exists()  # no second signing key
