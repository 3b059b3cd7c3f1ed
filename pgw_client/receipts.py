"""Receipts: what the gateway signs for every answer, read from any file it or this package writes, and
verified offline with the gateway's public key (``Client.public_key()`` fetches it through ``KeyService``).

Two kinds, one key (the gateway's Ed25519 signing key; key id = the first 16 hex digits of SHA-256 of the raw
32-byte public key):

- ``release``: a query or model answer. Ed25519 over the UTF-8 bytes of ``payload_json`` (canonical JSON with
  ``"type": "privacy_gateway.receipt"``). Files: ``{"payload_json", "signature_b64", "key_id"}`` (what
  ``Receipt.save`` and ``pgw query --receipt-out`` write; ``pgw query --json`` and ``pgw train --json`` carry
  one as their ``receipt`` object), or a response in protobuf's JSON mapping (a ``receipt`` object with
  ``payloadJson``, ``signature``, ``keyId``).
- ``verification``: a yes/no check. The payload is a leaf of a Merkle tree (``leaf = SHA-256(0x00 ||
  payload)``, ``node = SHA-256(0x01 || left || right)``, an odd node carried up unchanged); the key signs
  ``"privacy-gateway/receipt-root/v1" NUL || root || tree size (8 bytes, big endian)`` once per batch. Files:
  ``{"payload", "signature", "key_id", "leaf_index", "tree_size", "audit_path"}`` (base64 bytes), one per
  line with an ``index`` for a batch (``pgw verify-batch --receipts-out``).

``load_receipts(path)`` reads every one of these; ``Receipt.verify(public_key_pem)`` checks one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pgw_client.errors import ReceiptError

__all__ = ["RELEASE_RECEIPT_TYPE", "ROOT_CONTEXT", "Receipt", "key_id_of_pem", "load_receipts"]

RELEASE_RECEIPT_TYPE = "privacy_gateway.receipt"
ROOT_CONTEXT = b"privacy-gateway/receipt-root/v1\x00"
_LEGACY_PREFIX = "ed25519:"


def _public_key(pem: bytes | str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii") if isinstance(pem, str) else bytes(pem))
    except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError) as exc:
        raise ReceiptError(f"the public key is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ReceiptError("the public key is not an Ed25519 key (the gateway signs with Ed25519)")
    return key


def key_id_of_pem(pem: bytes | str) -> str:
    """The gateway's key id of a PEM public key: 16 hex digits of SHA-256 of the raw key."""
    raw = _public_key(pem).public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _b64(value: object, what: str) -> bytes:
    if not isinstance(value, str):
        raise ReceiptError(f"{what} must be base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ReceiptError(f"{what} is not base64: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Receipt:
    """A signed receipt of either kind (see the module docstring).

    Attributes:
        kind: ``release`` (query, model) or ``verification``.
        payload_bytes: The signed payload exactly as received.
        signature: The Ed25519 signature (over the payload, or over the Merkle root for verification).
        key_id: The signing key's id.
        leaf_index, tree_size, audit_path: The Merkle proof (verification receipts only).
    """

    kind: Literal["release", "verification"]
    payload_bytes: bytes
    signature: bytes
    key_id: str
    leaf_index: int = 0
    tree_size: int = 0
    audit_path: bytes = b""

    @property
    def payload(self) -> dict[str, Any]:
        """The parsed payload (``request_id``, ``consumer``, ``dataset``, ``cost``, ...); empty if unparsable."""
        try:
            obj = json.loads(self.payload_bytes)
        except ValueError:
            return {}
        return obj if isinstance(obj, dict) else {}

    @property
    def request_id(self) -> str:
        """The request id the receipt is for ("" when the payload has none)."""
        return str(self.payload.get("request_id", ""))

    @classmethod
    def from_proto(cls, message: Any) -> Receipt:
        """From a ``privacy_gateway.v1.Receipt`` or ``VerificationReceipt`` message."""
        if hasattr(message, "payload_json"):
            return cls("release", message.payload_json.encode("utf-8"), bytes(message.signature), message.key_id)
        return cls("verification", bytes(message.payload), bytes(message.signature), message.key_id,
                   int(message.leaf_index), int(message.tree_size), bytes(message.audit_path))

    def to_json(self) -> dict[str, Any]:
        """The file form of this receipt (what ``save`` writes and ``load_receipts`` reads)."""
        if self.kind == "release":
            return {"payload_json": self.payload_bytes.decode("utf-8"),
                    "signature_b64": base64.b64encode(self.signature).decode("ascii"), "key_id": self.key_id}
        return {"payload": base64.b64encode(self.payload_bytes).decode("ascii"),
                "signature": base64.b64encode(self.signature).decode("ascii"), "key_id": self.key_id,
                "leaf_index": self.leaf_index, "tree_size": self.tree_size,
                "audit_path": base64.b64encode(self.audit_path).decode("ascii")}

    @classmethod
    def from_json(cls, obj: object) -> Receipt:
        """Parse one receipt object of any form the gateway's clients write.

        Raises:
            ReceiptError: ``obj`` is not a receipt of a known form.
        """
        if not isinstance(obj, dict):
            raise ReceiptError("a receipt is a JSON object")
        if isinstance(obj.get("receipt"), dict):  # a whole `pgw query --json` / protobuf JSON response
            return cls.from_json(obj["receipt"])
        if "payload_json" in obj or "payloadJson" in obj:
            text = obj.get("payload_json", obj.get("payloadJson"))
            sig = obj.get("signature_b64", obj.get("signature"))
            key_id = obj.get("key_id", obj.get("keyId"))
            if not isinstance(text, str) or not isinstance(key_id, str):
                raise ReceiptError("a release receipt needs text fields payload_json and key_id")
            return cls("release", text.encode("utf-8"), _b64(sig, "signature_b64"), key_id)
        if "payload" in obj:
            key_id = obj.get("key_id", obj.get("keyId"))
            if not isinstance(key_id, str):
                raise ReceiptError("a verification receipt needs a text field key_id")
            try:
                leaf = int(obj.get("leaf_index", obj.get("leafIndex", 0)) or 0)
                size = int(obj.get("tree_size", obj.get("treeSize", 0)) or 0)
            except (TypeError, ValueError) as exc:
                raise ReceiptError("leaf_index and tree_size must be integers") from exc
            path = obj.get("audit_path", obj.get("auditPath", ""))
            return cls("verification", _b64(obj["payload"], "payload"), _b64(obj.get("signature"), "signature"),
                       key_id, leaf, size, _b64(path, "audit_path") if path else b"")
        raise ReceiptError("not a receipt: expected payload_json (query, model) or payload (verification)")

    def save(self, path: str | Path) -> Path:
        """Write the receipt as a JSON file; returns the path."""
        out = Path(path)
        out.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return out

    def verify(self, public_key_pem: bytes | str) -> bool:
        """True if the gateway key ``public_key_pem`` signed this receipt (and the receipt names that key).

        Raises:
            ReceiptError: ``public_key_pem`` is not an Ed25519 public key.
        """
        key = _public_key(public_key_pem)
        key_id = key_id_of_pem(public_key_pem)
        claimed = self.payload
        if self.kind == "release":
            if not (claimed.get("type") == RELEASE_RECEIPT_TYPE and claimed.get("key_id") == key_id
                    and self.key_id == key_id):
                return False
            message = self.payload_bytes
        else:
            if self.key_id not in (key_id, _LEGACY_PREFIX + key_id) or claimed.get("key_id") != self.key_id:
                return False
            root = self._merkle_root()
            if root is None:
                return False
            message = ROOT_CONTEXT + root + self.tree_size.to_bytes(8, "big")
        try:
            key.verify(self.signature, message)
        except InvalidSignature:
            return False
        return True

    def _merkle_root(self) -> bytes | None:
        if not 0 <= self.leaf_index < self.tree_size or len(self.audit_path) % 32:
            return None
        h = hashlib.sha256(b"\x00" + self.payload_bytes).digest()
        j, n = self.leaf_index, self.tree_size
        path = [self.audit_path[k:k + 32] for k in range(0, len(self.audit_path), 32)]
        while n > 1:
            if j ^ 1 < n:
                if not path:
                    return None
                sib = path.pop(0)
                h = hashlib.sha256(b"\x01" + (h + sib if j % 2 == 0 else sib + h)).digest()
            j, n = j // 2, (n + 1) // 2
        return None if path else h


def load_receipts(path: str | Path) -> list[Receipt]:
    """Every receipt in a file: one JSON object of any receipt form, or JSON lines (a batch's receipts).

    Raises:
        ReceiptError: the file is missing, empty, or holds something that is not a receipt (the message names
            the file and the line).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ReceiptError(f"{p}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ReceiptError(f"{p}: cannot be read: {exc}") from exc
    try:
        return [Receipt.from_json(json.loads(text))]
    except ValueError:
        pass  # not one JSON document: JSON lines
    except ReceiptError as exc:
        raise ReceiptError(f"{p}: {exc}") from exc
    out = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(Receipt.from_json(json.loads(line)))
        except ValueError as exc:
            raise ReceiptError(f"{p}: line {number} is not JSON ({exc.args[0]})") from exc
        except ReceiptError as exc:
            raise ReceiptError(f"{p}: line {number}: {exc}") from exc
    if not out:
        raise ReceiptError(f"{p}: the file holds no receipt")
    return out
