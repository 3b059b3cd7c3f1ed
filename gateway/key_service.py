"""privacy_gateway.v1.KeyService: publishes the gateway's Ed25519 public key (receipts, audit seals)."""

from __future__ import annotations

import grpc
from privacy_gateway.v1 import receipt_pb2
from privacy_gateway.v1 import receipt_pb2_grpc as key_grpc

from gateway.service import _rpc
from gateway.signing import Signer

__all__ = ["KEY_SERVICE_NAME", "KeyServicer"]

KEY_SERVICE_NAME = receipt_pb2.DESCRIPTOR.services_by_name["KeyService"].full_name


class KeyServicer(key_grpc.KeyServiceServicer):
    """Serves the public key. It is public, so the mTLS handshake is the only check (no policy lookup)."""

    def __init__(self, signer: Signer) -> None:
        """Serve `signer`'s public key."""
        self.signer = signer

    @_rpc
    def GetPublicKey(
        self, request: receipt_pb2.GetPublicKeyRequest, context: grpc.ServicerContext
    ) -> receipt_pb2.GetPublicKeyResponse:
        """The key id, the PEM public key and the algorithm."""
        return receipt_pb2.GetPublicKeyResponse(
            key_id=self.signer.key_id,
            public_key_pem=self.signer.public_pem.decode("ascii"),
            algorithm="Ed25519",
        )
