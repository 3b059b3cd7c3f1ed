"""Verification receipts: Merkle-tree receipts signed by the gateway's key (one signature per batch), and the
HMAC key that pseudonymises subjects, parameters and case references in the verification state.

A receipt's `payload` is canonical JSON (built by `gateway.products.verification.service`); payloads are the leaves
of a Merkle tree, `leaf = SHA-256(0x00 || payload)`, `node = SHA-256(0x01 || left || right)`, an odd node at the end
of a level is carried up unchanged. The gateway's signing key (`gateway.release.signing.Signer`, the key
`KeyService.GetPublicKey` publishes, which also signs query and model receipts and the audit log's seals) signs
`ROOT_CONTEXT || root || size (8 bytes, big endian)` once per tree; each receipt carries its leaf index, the tree
size, its audit path (the sibling hashes from the leaf up, 32 bytes each) and the key id
(`gateway.release.signing.key_id_of`: 16 hex digits of SHA-256 of the raw public key), so it verifies offline on
its own with the public key.

One key signs several kinds of message, kept apart by their first bytes: a tree root starts with `ROOT_CONTEXT`
(`privacy-gateway/receipt-root/v1` and a NUL byte), which no canonical JSON document (a query receipt, an audit
seal, an export) can start with, and a JSON verifier refuses it as JSON.

Receipts issued before one key signed everything carry a key id of the form `ed25519:<16 hex digits>` and were
signed by the key in `<state_dir>/verification-signing.key` (no longer read by the gateway; it stays on disk).
`verify_receipt` accepts that form of the same key's id, so such a receipt still verifies with that key's public
half (`openssl pkey -in verification-signing.key -pubout`); the signature is checked the same way either way.

Cost for 100,000 leaves (2-core machine): about 0.1 s of leaf hashes, 0.1 s of inner nodes, and the
audit paths gathered with numpy in well under 0.1 s.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from privacy_gateway.v1 import verification_service_pb2 as v_pb

from gateway.release.signing import Signer, key_id_of, load_or_create_secret

__all__ = [
    "LEGACY_KEY_ID_PREFIX",
    "ROOT_CONTEXT",
    "KeyedHasher",
    "ReceiptBatch",
    "ReceiptData",
    "issue_receipts",
    "load_public_key",
    "root_message_of",
    "verify_receipt",
    "verify_receipt_file",
]

ROOT_CONTEXT = b"privacy-gateway/receipt-root/v1\x00"
LEGACY_KEY_ID_PREFIX = "ed25519:"
HMAC_KEY_BYTES = 32


class KeyedHasher:
    """HMAC-SHA256 with a 32-byte key kept under the state directory (mode 0600)."""

    def __init__(self, path: Path) -> None:
        """Load the key at `path`, creating it on first use (`gateway.release.signing.load_or_create_secret`)."""
        key = load_or_create_secret(path, HMAC_KEY_BYTES)
        self._base = hmac.new(key, digestmod=hashlib.sha256)

    def hex(self, *parts: str) -> str:
        """HMAC over the NUL-joined UTF-8 parts, hex."""
        h = self._base.copy()
        h.update("\x00".join(parts).encode())
        return h.hexdigest()

    def digests(self, *prefix: str, last: list[str]) -> list[bytes]:
        """`bytes.fromhex(self.hex(*prefix, x))` for every `x` in `last` (one call for a whole batch)."""
        head = "".join(p + "\x00" for p in prefix)
        base = self._base

        def one(x: str) -> bytes:
            h = base.copy()
            h.update((head + x).encode())
            return h.digest()

        return [one(x) for x in last]


# -- receipts: a Merkle tree over canonical JSON leaves, one Ed25519 signature per tree ------------------------


def _leaf(payload: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + payload).digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _root_message(root: bytes, size: int) -> bytes:
    return ROOT_CONTEXT + root + size.to_bytes(8, "big")


@dataclass(frozen=True, slots=True)
class ReceiptData:
    """A receipt in plain Python form (the proto `Receipt` has the same fields)."""

    payload: bytes
    signature: bytes
    key_id: str
    leaf_index: int
    tree_size: int
    audit_path: bytes

    def to_json(self) -> dict[str, Any]:
        """A JSON document for `pgw verify-receipt` (bytes base64)."""
        return {"payload": base64.b64encode(self.payload).decode(),
                "signature": base64.b64encode(self.signature).decode(), "key_id": self.key_id,
                "leaf_index": self.leaf_index, "tree_size": self.tree_size,
                "audit_path": base64.b64encode(self.audit_path).decode()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ReceiptData:
        """Parse `to_json`'s output."""
        return cls(base64.b64decode(d["payload"]), base64.b64decode(d["signature"]), str(d["key_id"]),
                   int(d["leaf_index"]), int(d["tree_size"]), base64.b64decode(d.get("audit_path", "")))

    def to_pb(self) -> v_pb.VerificationReceipt:
        """The proto form."""
        return v_pb.VerificationReceipt(payload=self.payload, signature=self.signature, key_id=self.key_id,
                            leaf_index=self.leaf_index, tree_size=self.tree_size, audit_path=self.audit_path)

    @classmethod
    def from_pb(cls, r: v_pb.VerificationReceipt) -> ReceiptData:
        """From the proto form."""
        return cls(r.payload, r.signature, r.key_id, r.leaf_index, r.tree_size, r.audit_path)


@dataclass(frozen=True, slots=True)
class ReceiptBatch:
    """The receipts of one tree, column-wise: `payloads[k]` and `paths[k]` belong to leaf k."""

    payloads: list[bytes]
    paths: list[bytes]
    signature: bytes
    key_id: str
    root: bytes

    @property
    def size(self) -> int:
        """The number of leaves."""
        return len(self.payloads)

    def root_message(self) -> bytes:
        """What the signature covers (also what the audit log records for the batch)."""
        return _root_message(self.root, self.size)

    def receipt(self, k: int) -> ReceiptData:
        """The receipt of leaf k."""
        return ReceiptData(self.payloads[k], self.signature, self.key_id, k, self.size, self.paths[k])


def _audit_paths(levels: list[list[bytes]]) -> list[bytes]:
    """Every leaf's audit path: at level k the node of leaf i is i >> k, its sibling (i >> k) ^ 1 when it
    exists (a level of odd length carries its last node up without a sibling). Gathered with numpy from
    one array of all nodes below the root; row-major selection keeps each leaf's hashes bottom-up."""
    n = len(levels[0])
    below = levels[:-1]
    if not below:
        return [b""]
    nodes = np.frombuffer(b"".join(b"".join(lv) for lv in below), np.dtype("V32"))  # one item per hash
    leaf = np.arange(n, dtype=np.int64)
    index = np.empty((n, len(below)), np.int64)
    present = np.empty((n, len(below)), np.bool_)
    offset = 0
    for k, lv in enumerate(below):
        sibling = (leaf >> k) ^ 1
        present[:, k] = sibling < len(lv)
        index[:, k] = offset + np.minimum(sibling, len(lv) - 1)
        offset += len(lv)
    flat = nodes[index[present]].tobytes()  # row-major: leaf by leaf, bottom-up
    ends = (np.cumsum(present.sum(axis=1)) * 32).tolist()
    starts = [0, *ends[:-1]]
    return [flat[a:b] for a, b in zip(starts, ends, strict=True)]


def issue_receipts(signer: Signer, payloads: list[bytes]) -> ReceiptBatch:
    """Receipts for `payloads`: one Merkle tree (odd nodes carried up), one signature over its root."""
    if not payloads:
        raise ValueError("a receipt tree needs at least one payload")
    sha = hashlib.sha256
    level = [sha(b"\x00" + p).digest() for p in payloads]
    levels = [level]
    while len(level) > 1:
        nxt = [sha(b"\x01" + a + b).digest() for a, b in zip(level[0::2], level[1::2], strict=False)]
        if len(level) % 2:
            nxt.append(level[-1])
        levels.append(nxt)
        level = nxt
    signature = signer.sign(_root_message(level[0], len(payloads)))
    return ReceiptBatch(payloads, _audit_paths(levels), signature, signer.key_id, level[0])


def root_message_of(receipt: ReceiptData) -> bytes | None:
    """The signed root message the receipt's payload and audit path lead to (None: malformed path).

    This is also what the audit log's entry for the request digests (`released_digest`)."""
    if not 0 <= receipt.leaf_index < receipt.tree_size or len(receipt.audit_path) % 32:
        return None
    h, j, n = _leaf(receipt.payload), receipt.leaf_index, receipt.tree_size
    path = [receipt.audit_path[k:k + 32] for k in range(0, len(receipt.audit_path), 32)]
    while n > 1:
        if j ^ 1 < n:
            if not path:
                return None
            sib = path.pop(0)
            h = _node(h, sib) if j % 2 == 0 else _node(sib, h)
        j, n = j // 2, (n + 1) // 2
    if path:
        return None
    return _root_message(h, receipt.tree_size)


def _raw(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def verify_receipt(receipt: ReceiptData, public_key: Ed25519PublicKey | bytes | str) -> bool:
    """True if the receipt's payload is in a tree whose root the key (an Ed25519 key or its PEM) signed, and the
    receipt and its payload name that key (its id, or the `ed25519:` form of receipts from before one key signed
    everything). Never raises for bad input."""
    try:
        key = public_key if isinstance(public_key, Ed25519PublicKey) else load_public_key(
            public_key.encode("ascii") if isinstance(public_key, str) else public_key)
    except ValueError:
        return False
    key_id = key_id_of(_raw(key))
    if receipt.key_id not in (key_id, LEGACY_KEY_ID_PREFIX + key_id):
        return False
    try:
        claimed = json.loads(receipt.payload)
    except ValueError:
        return False
    if not isinstance(claimed, dict) or claimed.get("key_id") != receipt.key_id:
        return False
    message = root_message_of(receipt)
    if message is None:
        return False
    try:
        key.verify(receipt.signature, message)
    except InvalidSignature:
        return False
    return True


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM.

    Raises:
        ValueError: the PEM is not an Ed25519 public key.
    """
    try:
        key = serialization.load_pem_public_key(pem)
    except UnsupportedAlgorithm as exc:
        raise ValueError("not a supported public key") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def verify_receipt_file(receipt_path: Path, public_key_path: Path) -> tuple[bool, dict[str, Any]]:
    """(valid, payload) for a receipt JSON file (`ReceiptData.to_json`) and a PEM public key."""
    receipt = ReceiptData.from_json(json.loads(receipt_path.read_text()))
    ok = verify_receipt(receipt, public_key_path.read_bytes())
    try:
        payload = json.loads(receipt.payload)
    except ValueError:
        payload = {}
    return ok, payload if isinstance(payload, dict) else {}
