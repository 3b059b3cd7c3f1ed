"""Merkle-tree receipts of verification: every leaf of every tree size verifies alone; any change breaks it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from gateway.products.verification.receipts import (
    ReceiptData,
    issue_receipts,
    root_message_of,
    verify_receipt,
)
from gateway.release.receipts import make_receipt
from gateway.release.receipts import verify_receipt as verify_query_receipt
from gateway.release.signing import Signer, verify


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Signer:
    """The gateway's kind of signing key, in a temporary state directory."""
    return Signer.load_or_create(Path(tmp_path_factory.mktemp("state")))


def _payloads(signer: Signer, n: int) -> list[bytes]:
    return [json.dumps({"key_id": signer.key_id, "id": f"x-{i:06d}", "result": "MATCH"}).encode()
            for i in range(n)]


@pytest.mark.parametrize("n", [*range(1, 34), 96, 97, 1000, 3 * 2**9])
def test_every_leaf_verifies(signer: Signer, n: int) -> None:
    """Odd levels carry their last node up; the numpy audit paths match the verifier's walk."""
    batch = issue_receipts(signer, _payloads(signer, n))
    roots = set()
    for k in range(n):
        receipt = batch.receipt(k)
        assert verify_receipt(receipt, signer.public_pem), (n, k)
        roots.add(root_message_of(receipt))
    assert roots == {batch.root_message()}
    assert len(batch.paths[0]) == 32 * (n - 1).bit_length()


def test_one_bit_anywhere_breaks_a_receipt(signer: Signer) -> None:
    """Flipping any bit of the payload, signature or audit path, or moving the leaf, fails verification."""
    batch = issue_receipts(signer, _payloads(signer, 13))
    good = batch.receipt(6)
    for name in ("payload", "signature", "audit_path"):
        blob = getattr(good, name)
        for bit in range(0, 8 * len(blob), 7):
            flipped = bytearray(blob)
            flipped[bit // 8] ^= 1 << (bit % 8)
            fields = {f: getattr(good, f) for f in ReceiptData.__slots__}
            bad = ReceiptData(**{**fields, name: bytes(flipped)})
            assert not verify_receipt(bad, signer.public_pem), (name, bit)
    for index, size in ((5, 13), (7, 13), (6, 12), (6, 14)):
        fields = {f: getattr(good, f) for f in ReceiptData.__slots__}
        assert not verify_receipt(ReceiptData(**{**fields, "leaf_index": index, "tree_size": size}),
                                  signer.public_pem)


def test_root_message_commits_to_the_size(signer: Signer) -> None:
    """The signed message carries the context, the root and the tree size."""
    batch = issue_receipts(signer, _payloads(signer, 3))
    message = batch.root_message()
    assert message.startswith(b"privacy-gateway/receipt-root/v1\x00") and message.endswith((3).to_bytes(8, "big"))
    assert hashlib.sha256(message).hexdigest() != hashlib.sha256(issue_receipts(
        signer, _payloads(signer, 4)).root_message()).hexdigest()


class _LegacySigner:
    """Signs like the gateway's key but names it the way receipts did before one key signed everything."""

    def __init__(self, signer: Signer) -> None:
        self.signer = signer
        self.key_id = "ed25519:" + signer.key_id

    def sign(self, data: bytes) -> bytes:
        return self.signer.sign(data)


def test_receipts_naming_the_key_in_the_earlier_form_still_verify(signer: Signer) -> None:
    """A receipt whose key id (and payload's) is `ed25519:<id>` of the verifying key verifies; the same form of
    another key's id does not, and neither does a receipt that names the key one way and its payload the other."""
    legacy = _LegacySigner(signer)
    batch = issue_receipts(legacy, _payloads(legacy, 5))  # type: ignore[arg-type]
    assert all(verify_receipt(batch.receipt(k), signer.public_pem) for k in range(5))
    other = Signer.generate()
    assert not verify_receipt(batch.receipt(0), other.public_pem)
    mixed = ReceiptData(**{**{f: getattr(batch.receipt(0), f) for f in ReceiptData.__slots__}, "key_id": signer.key_id})
    assert not verify_receipt(mixed, signer.public_pem)
    assert not verify_receipt(batch.receipt(0), b"not a key") and not verify_receipt(batch.receipt(0), "")


def test_one_key_signs_query_receipts_and_trees_and_neither_passes_for_the_other(signer: Signer) -> None:
    """The signature over a tree root is no query receipt (a root message is not JSON), and a query receipt's
    signature over its JSON payload is no tree root's (every root message starts with the tree context)."""
    batch = issue_receipts(signer, _payloads(signer, 1))
    root = batch.root_message()
    assert verify(signer.public_pem, root, batch.signature)  # the one key did sign it ...
    assert not verify_query_receipt(root, batch.signature, signer.public_pem)  # ... but not as a receipt
    with pytest.raises(ValueError):
        json.loads(root)
    receipt = make_receipt(signer, request_id="r", consumer="c", dataset="d", purpose="p", dataset_version="v",
                           policy_version="0" * 16, query_digest="0" * 64, mechanisms=[], epsilon=1.0, delta=0.0,
                           remaining_epsilon=1.0, remaining_delta=0.0, release_digest="0" * 64)
    payload = json.dumps({"key_id": signer.key_id}).encode()
    forged = ReceiptData(receipt.payload_json.encode(), receipt.signature, signer.key_id, 0, 1, b"")
    assert not verify_receipt(forged, signer.public_pem)
    assert not verify_receipt(ReceiptData(payload, receipt.signature, signer.key_id, 0, 1, b""), signer.public_pem)
