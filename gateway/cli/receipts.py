"""`pgw receipt verify FILE`: every receipt a command writes (query, model, one verification check, a batch's
JSON lines, `pgw query --json` output), checked with the gateway's key from a PEM file or fetched from the
gateway through `KeyService.GetPublicKey`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["fetch_public_key", "verify_receipt_file"]


def fetch_public_key(args: argparse.Namespace) -> tuple[str, str]:
    """(key id, PEM) from the gateway the client options name; the PEM is checked against the key id."""
    from privacy_gateway.v1 import receipt_pb2
    from privacy_gateway.v1 import receipt_pb2_grpc as key_grpc

    from gateway.cli.client import channel_for_args
    from pgw_client.errors import ClientSetupError
    from pgw_client.receipts import key_id_of_pem

    resp = key_grpc.KeyServiceStub(channel_for_args(args)).GetPublicKey(receipt_pb2.GetPublicKeyRequest())
    if key_id_of_pem(resp.public_key_pem) != resp.key_id:
        raise ClientSetupError(f"the gateway at {args.target} sent a public key that does not match its key id")
    return resp.key_id, resp.public_key_pem


def _summary(payload: dict[str, Any]) -> str:
    if payload.get("type") == "privacy_gateway.receipt":
        cost = payload.get("cost", {})
        lines = [f"{payload.get('request_id')}: {payload.get('consumer')} on {payload.get('dataset')} "
                 f"(version {payload.get('dataset_version')}), purpose {payload.get('purpose')}, "
                 f"cost epsilon {cost.get('epsilon')} delta {cost.get('delta')}, at {payload.get('time')}",
                 f"  policy {payload.get('policy_version')}, query digest {payload.get('query_digest')}"]
        lines += [f"  {m.get('output')}/{m.get('component')}: {m.get('mechanism')} scale {m.get('scale')} "
                  f"epsilon {m.get('epsilon')}" for m in payload.get("mechanisms", []) if isinstance(m, dict)]
        return "\n".join(lines)
    keys = ("request_id", "template", "result", "band", "time")
    return ", ".join(f"{k} {payload[k]}" for k in keys if k in payload) or json.dumps(payload)[:200]


def verify_receipt_file(path: Path, *, public_key: Path | None = None, pem: str | None = None,
                        as_json: bool = False) -> int:
    """Check every receipt in ``path`` with the key in the PEM file ``public_key`` (or the PEM text ``pem``);
    print one line per receipt; 0 if all are valid, 1 otherwise.

    Raises:
        ReceiptError: the file is not a receipt file, or the key is not an Ed25519 PEM key.
    """
    from pgw_client.errors import ReceiptError
    from pgw_client.receipts import key_id_of_pem, load_receipts

    if pem is None:
        assert public_key is not None
        try:
            pem = public_key.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ReceiptError(f"{public_key}: cannot read the public key: {exc}") from exc
    key_id = key_id_of_pem(pem)
    receipts = load_receipts(path)
    results = [(r, r.verify(pem)) for r in receipts]
    if as_json:
        docs = [{"valid": ok, "kind": r.kind, "key_id": r.key_id, "payload": r.payload if ok else {}}
                for r, ok in results]
        whole = docs[0] if len(docs) == 1 else {"valid": all(d["valid"] for d in docs), "count": len(docs),
                                                "receipts": docs}
        print(json.dumps(whole, indent=2))
    else:
        for r, ok in results:
            if ok:
                print(f"VALID {r.kind} receipt, key {r.key_id}: {_summary(r.payload)}")
            else:
                why = (f"signed by key {r.key_id}, not {key_id}" if r.key_id.removeprefix("ed25519:") != key_id
                       else "the signature or the payload does not verify")
                print(f"INVALID {r.kind} receipt: {why}")
        if len(results) > 1:
            print(f"{sum(ok for _, ok in results)} of {len(results)} receipts valid")
    return 0 if all(ok for _, ok in results) else 1
