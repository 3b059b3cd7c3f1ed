"""KeyService over the real mTLS server, and the governance objects the server opens."""

from __future__ import annotations

import grpc
import pytest
from privacy_gateway.v1 import receipt_pb2
from privacy_gateway.v1 import receipt_pb2_grpc as key_grpc

from gateway.release.signing import public_key_id
from gateway.rpc.server import Gateway
from tests.helpers import Env, channel_for

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
