"""Merkle-tree receipts of verification: every leaf of every tree size verifies alone; any change breaks it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from gateway.products.verification.receipts import (
    Ed25519FileSigner,
    ReceiptData,
    issue_receipts,
    root_message_of,
    verify_receipt,
)


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> Ed25519FileSigner:
    """A file signer in a temporary directory."""
    return Ed25519FileSigner(Path(tmp_path_factory.mktemp("keys")) / "signing.key")


def _payloads(signer: Ed25519FileSigner, n: int) -> list[bytes]:
    return [json.dumps({"key_id": signer.key_id, "id": f"x-{i:06d}", "result": "MATCH"}).encode()
            for i in range(n)]


@pytest.mark.parametrize("n", [*range(1, 34), 96, 97, 1000, 3 * 2**9])
def test_every_leaf_verifies(signer: Ed25519FileSigner, n: int) -> None:
    """Odd levels carry their last node up; the numpy audit paths match the verifier's walk."""
    batch = issue_receipts(signer, _payloads(signer, n))
    roots = set()
    for k in range(n):
        receipt = batch.receipt(k)
        assert verify_receipt(receipt, signer.public_key), (n, k)
        roots.add(root_message_of(receipt))
    assert roots == {batch.root_message()}
    assert len(batch.paths[0]) == 32 * (n - 1).bit_length()


def test_one_bit_anywhere_breaks_a_receipt(signer: Ed25519FileSigner) -> None:
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
            assert not verify_receipt(bad, signer.public_key), (name, bit)
    for index, size in ((5, 13), (7, 13), (6, 12), (6, 14)):
        fields = {f: getattr(good, f) for f in ReceiptData.__slots__}
        assert not verify_receipt(ReceiptData(**{**fields, "leaf_index": index, "tree_size": size}),
                                  signer.public_key)


def test_root_message_commits_to_the_size(signer: Ed25519FileSigner) -> None:
    """The signed message carries the context, the root and the tree size."""
    batch = issue_receipts(signer, _payloads(signer, 3))
    message = batch.root_message()
    assert message.startswith(b"privacy-gateway/receipt-root/v1\x00") and message.endswith((3).to_bytes(8, "big"))
    assert hashlib.sha256(message).hexdigest() != hashlib.sha256(issue_receipts(
        signer, _payloads(signer, 4)).root_message()).hexdigest()
