"""Signed receipts for released answers: what was asked (a digest), by whom, at what cost, under which policy.

A receipt's payload is canonical JSON (``gateway.release.signing.canonical_json``; floats as repr strings) with
``"type": "privacy_gateway.receipt"`` so a receipt signature can never pass as an audit seal or export
signature (those carry other types) and vice versa. A verifier checks the Ed25519 signature over the
UTF-8 bytes of ``payload_json`` exactly as received, then parses them; nothing is re-serialized.

Payload (version 1): ``type``, ``version``, ``request_id``, ``consumer``, ``dataset``, ``purpose``,
``dataset_version``, ``policy_version`` (first 16 hex of SHA-256 of the operator policy file),
``query_digest`` (SHA-256 of the normalized query, ``gateway.release.digests``), ``mechanisms`` (per release:
output, component, mechanism, sensitivity, scale, epsilon), ``cost`` and ``budget_remaining``
(``{"epsilon", "delta"}``), ``release_digest`` (SHA-256 of ``release_bytes(response)``, the same digest
the audit log records), ``time`` (UTC ISO 8601) and ``key_id``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf.message import Message
from privacy_gateway.v1 import query_service_pb2 as q_pb
from privacy_gateway.v1 import receipt_pb2

from gateway.release.digests import query_digest, release_digest
from gateway.release.signing import Signer, canonical_json, public_key_id, verify

__all__ = [
    "RECEIPT_TYPE",
    "RECEIPT_VERSION",
    "MechanismUse",
    "Receipt",
    "attach_receipt",
    "make_receipt",
    "policy_version",
    "release_bytes",
    "verify_receipt",
]

RECEIPT_TYPE = "privacy_gateway.receipt"
RECEIPT_VERSION = 1


@dataclass(frozen=True, slots=True)
class MechanismUse:
    """One measurement of a released answer.

    Attributes:
        output: The output column.
        component: ``count`` or ``sum``.
        mechanism: The OpenDP mechanism, e.g. ``discrete_laplace``.
        sensitivity: The L1 sensitivity (d_in).
        scale: The noise scale.
        epsilon: The privacy loss of this measurement (its OpenDP privacy map).
    """

    output: str
    component: str
    mechanism: str
    sensitivity: float
    scale: float
    epsilon: float


@dataclass(frozen=True, slots=True)
class Receipt:
    """A signed receipt.

    Attributes:
        payload_json: The canonical JSON payload as text.
        signature: Ed25519 over ``payload_json.encode("utf-8")``.
        key_id: The signing key's id.
    """

    payload_json: str
    signature: bytes
    key_id: str

    def payload(self) -> dict[str, object]:
        """The parsed payload (floats stay decimal strings)."""
        obj = json.loads(self.payload_json)
        if not isinstance(obj, dict):
            raise ValueError("receipt payload is not a JSON object")
        return obj

    def to_proto(self) -> receipt_pb2.Receipt:
        """The ``privacy_gateway.v1.Receipt`` message."""
        return receipt_pb2.Receipt(
            payload_json=self.payload_json, signature=self.signature, key_id=self.key_id
        )

    @classmethod
    def from_proto(cls, message: receipt_pb2.Receipt) -> Receipt:
        """From a ``privacy_gateway.v1.Receipt`` message."""
        return cls(message.payload_json, bytes(message.signature), message.key_id)

    def to_client_json(self) -> str:
        """The file format clients save: ``{"payload_json", "signature_b64", "key_id"}``."""
        return json.dumps(
            {
                "payload_json": self.payload_json,
                "signature_b64": base64.b64encode(self.signature).decode("ascii"),
                "key_id": self.key_id,
            },
            indent=2,
            ensure_ascii=False,
        )

    @classmethod
    def from_client_json(cls, data: str | bytes) -> Receipt:
        """Parses the client file format.

        Raises:
            ValueError: A field is missing or has the wrong type, or the signature is not base64.
        """
        obj = json.loads(data)
        if not isinstance(obj, dict):
            raise ValueError("a receipt file holds a JSON object")
        payload, sig, key_id = obj.get("payload_json"), obj.get("signature_b64"), obj.get("key_id")
        if not isinstance(payload, str) or not isinstance(sig, str) or not isinstance(key_id, str):
            raise ValueError("a receipt file needs string fields payload_json, signature_b64, key_id")
        return cls(payload, base64.b64decode(sig, validate=True), key_id)


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def policy_version(policy_file: Path) -> str:
    """The first 16 hex digits of SHA-256 of the operator policy file's bytes."""
    return hashlib.sha256(Path(policy_file).read_bytes()).hexdigest()[:16]


def make_receipt(
    signer: Signer,
    *,
    request_id: str,
    consumer: str,
    dataset: str,
    purpose: str,
    dataset_version: str,
    policy_version: str,
    query_digest: str,
    mechanisms: Sequence[MechanismUse],
    epsilon: float,
    delta: float,
    remaining_epsilon: float,
    remaining_delta: float,
    release_digest: str = "",
    time: str | None = None,
) -> Receipt:
    """Builds and signs a receipt (see the module docstring for the payload).

    Args:
        signer: The gateway's key.
        request_id: The request id of the release.
        consumer: The certificate identity of the caller.
        dataset: The dataset name.
        purpose: The grant's purpose.
        dataset_version: The data version the answer was computed on.
        policy_version: ``policy_version(operator policy file)``.
        query_digest: ``gateway.release.digests.query_digest(normalized query)``.
        mechanisms: One entry per measurement.
        epsilon: The epsilon charged.
        delta: The delta charged.
        remaining_epsilon: The grant's epsilon left after the charge.
        remaining_delta: The grant's delta left after the charge.
        release_digest: SHA-256 of ``release_bytes(response)``.
        time: UTC ISO 8601 time (default: now).

    Returns:
        The signed receipt.
    """
    payload = {
        "type": RECEIPT_TYPE,
        "version": RECEIPT_VERSION,
        "request_id": request_id,
        "consumer": consumer,
        "dataset": dataset,
        "purpose": purpose,
        "dataset_version": dataset_version,
        "policy_version": policy_version,
        "query_digest": query_digest,
        "mechanisms": [
            {
                "output": m.output,
                "component": m.component,
                "mechanism": m.mechanism,
                "sensitivity": float(m.sensitivity),
                "scale": float(m.scale),
                "epsilon": float(m.epsilon),
            }
            for m in mechanisms
        ],
        "cost": {"epsilon": float(epsilon), "delta": float(delta)},
        "budget_remaining": {"epsilon": float(remaining_epsilon), "delta": float(remaining_delta)},
        "release_digest": release_digest,
        "time": time or _utc_now(),
        "key_id": signer.key_id,
    }
    data = canonical_json(payload)
    return Receipt(data.decode("utf-8"), signer.sign(data), signer.key_id)


def verify_receipt(receipt_json: bytes, signature: bytes, pub_pem: bytes | str) -> bool:
    """True if ``signature`` verifies over ``receipt_json`` under ``pub_pem`` and it is a receipt of that key.

    Args:
        receipt_json: The payload bytes exactly as received (``payload_json`` UTF-8 encoded).
        signature: The Ed25519 signature.
        pub_pem: The gateway's public key PEM (obtained out of band or from ``KeyService``).

    Returns:
        False for a bad signature, a wrong key, a payload that is not a receipt, or malformed input.
    """
    if not verify(pub_pem, receipt_json, signature):
        return False
    try:
        payload = json.loads(bytes(receipt_json).decode("utf-8"))
        return (
            isinstance(payload, dict)
            and payload.get("type") == RECEIPT_TYPE
            and payload.get("version") == RECEIPT_VERSION
            and payload.get("key_id") == public_key_id(pub_pem)
        )
    except ValueError:
        return False


def release_bytes(response: Message) -> bytes:
    """The bytes a release digest covers: the response with ``receipt`` cleared and ``replayed`` false.

    Any product's response (query, model) has these two fields. Deterministic serialization is stable for
    one protobuf version; clients in other languages should compare the ``request_id`` and values rather
    than recompute this digest.
    """
    copy = type(response)()
    copy.CopyFrom(response)
    copy.ClearField("receipt")
    copy.replayed = False  # type: ignore[attr-defined]
    return copy.SerializeToString(deterministic=True)


def attach_receipt(
    response: Any,
    signer: Signer,
    *,
    consumer: str,
    dataset: str,
    purpose: str,
    policy_version: str,
    normalized_query: str,
    time: str | None = None,
) -> Receipt:
    """Signs a receipt for a fresh product response and sets ``response.receipt``; the one integration point.

    ``response`` is a RunQueryResponse (its mechanisms are ``plan.releases``) or a Train/EvaluateModelResponse
    (``releases``); every product response has ``request_id``, ``dataset_version``, ``privacy_cost``,
    ``budget`` and ``receipt``.

    Call it after the response is complete and before ``Ledger.complete`` stores it, so a replay returns
    the same receipt.

    Args:
        response: The answer about to be released (its receipt field is overwritten).
        signer: The gateway's key.
        consumer: The certificate identity of the caller.
        dataset: The dataset name.
        purpose: The grant's purpose.
        policy_version: ``policy_version(operator policy file)``.
        normalized_query: The normalized query text (its digest goes in the receipt, never the text).
        time: UTC ISO 8601 time (default: now).

    Returns:
        The receipt that was attached.
    """
    receipt = make_receipt(
        signer,
        request_id=response.request_id,
        consumer=consumer,
        dataset=dataset,
        purpose=purpose,
        dataset_version=response.dataset_version,
        policy_version=policy_version,
        query_digest=query_digest(normalized_query),
        mechanisms=_mechanisms(response),
        epsilon=response.privacy_cost.epsilon,
        delta=response.privacy_cost.delta,
        remaining_epsilon=response.budget.remaining.epsilon,
        remaining_delta=response.budget.remaining.delta,
        release_digest=release_digest(release_bytes(response)),
        time=time,
    )
    response.receipt.CopyFrom(receipt.to_proto())
    return receipt


def _mechanisms(response: Any) -> list[MechanismUse]:
    if isinstance(response, q_pb.RunQueryResponse):
        return [MechanismUse(r.output, r.component, r.mechanism, r.sensitivity, r.scale, r.privacy_loss.epsilon)
                for r in response.plan.releases]
    return [MechanismUse("model", r.component, r.mechanism, r.sensitivity, r.scale, r.privacy_loss.epsilon)
            for r in response.releases]
