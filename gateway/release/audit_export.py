"""Offline verification of an audit export (pure: no database, no gateway state), and its command line
(`python -m gateway.release.audit_export FILE --public-key PEM`; `python -m gateway.release.audit` runs it too)."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from gateway.release.audit_records import (
    EXPORT_FORMAT,
    GENESIS_HASH,
    AuditEntry,
    Problem,
    Seal,
    VerifyReport,
    _ChainVerifier,
    _export_payload,
)
from gateway.release.signing import canonical_json, public_key_id, verify

_ENTRY_FIELDS = {
    "type", "seq", "time", "request_id", "consumer", "rpc", "dataset", "purpose", "query", "outcome",
    "status_code", "reason", "epsilon", "delta", "released_digest", "identifiers", "prev_hash", "hash",
}


_SEAL_FIELDS = {"type", "seq", "head_hash", "time", "key_id", "signature"}


_STR_ENTRY_FIELDS = _ENTRY_FIELDS - {"type", "seq", "epsilon", "delta", "identifiers"}


_V2_FIELDS = {"v", "rho", "charge"}


def _parse_entry(obj: dict[str, object]) -> AuditEntry:
    v2 = "v" in obj
    if set(obj) != (_ENTRY_FIELDS | _V2_FIELDS if v2 else _ENTRY_FIELDS):
        raise ValueError("entry has missing or unexpected fields")
    seq, ids = obj["seq"], obj["identifiers"]
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise ValueError("seq is not an integer")
    if not isinstance(ids, dict) or not all(isinstance(v, str) for v in ids.values()):
        raise ValueError("identifiers is not an object of strings")
    for name in _STR_ENTRY_FIELDS:
        if not isinstance(obj[name], str):
            raise ValueError(f"{name} is not a string")
    eps, delta = obj["epsilon"], obj["delta"]
    if not isinstance(eps, str) or not isinstance(delta, str):
        raise ValueError("epsilon and delta must be repr strings")
    text = {name: str(obj[name]) for name in _STR_ENTRY_FIELDS}
    version, rho, charge = (obj["v"], obj["rho"], obj["charge"]) if v2 else (1, "0.0", "")
    if not isinstance(version, int) or isinstance(version, bool) or not isinstance(rho, str) or not isinstance(
            charge, str):
        raise ValueError("v, rho and charge must be an integer, a repr string and a string")
    return AuditEntry(
        seq=seq, time=text["time"], request_id=text["request_id"], consumer=text["consumer"],
        rpc=text["rpc"], dataset=text["dataset"], purpose=text["purpose"], query=text["query"],
        outcome=text["outcome"], status_code=text["status_code"], reason=text["reason"],
        epsilon=float(eps), delta=float(delta), released_digest=text["released_digest"],
        identifiers={str(k): str(v) for k, v in ids.items()}, prev_hash=text["prev_hash"],
        hash=text["hash"], v=version, rho=float(rho), charge=charge,
    )


def _canonical_hex(text: str) -> bytes:
    """Bytes from lowercase hex, as the gateway writes it; any other spelling (upper case) is a change.

    Raises:
        ValueError: not lowercase hex of whole bytes.
    """
    raw = bytes.fromhex(text)
    if raw.hex() != text:
        raise ValueError("hex must be lowercase, as written")
    return raw


def _parse_seal(obj: dict[str, object]) -> Seal:
    if set(obj) != _SEAL_FIELDS:
        raise ValueError("seal has missing or unexpected fields")
    seq = obj["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise ValueError("seq is not an integer")
    head_hash, time, key_id, signature = obj["head_hash"], obj["time"], obj["key_id"], obj["signature"]
    if not all(isinstance(v, str) for v in (head_hash, time, key_id, signature)):
        raise ValueError("seal fields must be strings")
    return Seal(seq, str(head_hash), str(time), str(key_id), _canonical_hex(str(signature)))


def verify_export(path: Path, pub_pem: bytes | str) -> VerifyReport:
    """Verifies an export offline against a trusted public key.

    The whole file must match the signed SHA-256 in its last line, every line must be canonical JSON,
    the entries must form an unbroken chain from ``from_seq`` to ``to_seq`` (from the genesis hash when
    ``from_seq`` is 1), every seal must verify under ``pub_pem`` and match the chain, and the last
    entry must be covered by a seal.

    Args:
        path: The JSONL file written by ``AuditLog.export``.
        pub_pem: The gateway's public key, obtained out of band (``pgw keys export``).

    Returns:
        The report (never raises for bad content; it becomes a problem).

    Raises:
        OSError: The file cannot be read.
    """
    raw = Path(path).read_bytes()
    problems: list[Problem] = []
    try:
        trusted_id = public_key_id(pub_pem)
    except ValueError:
        return VerifyReport(0, 0, 1, 0, 0, (Problem(None, "key_mismatch", "the public key is not Ed25519 PEM"),))
    header: dict[str, object] | None = None
    entries: list[AuditEntry] = []
    seals: list[Seal] = []
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    trailer_line = lines.pop() if lines else b""
    body = raw[: len(raw) - len(trailer_line) - 1] if trailer_line else raw
    try:
        trailer = json.loads(trailer_line.decode("utf-8"))
        if not isinstance(trailer, dict) or canonical_json(trailer) != trailer_line:
            raise ValueError("not canonical JSON")
        if trailer.get("type") != "export_signature" or set(trailer) != {"type", "sha256", "signature"}:
            raise ValueError("the last line is not an export signature")
        digest, signature = str(trailer["sha256"]), _canonical_hex(str(trailer["signature"]))
        if digest != hashlib.sha256(body).hexdigest():
            problems.append(Problem(None, "modified", "the export's content does not match its signed digest"))
        if not verify(pub_pem, _export_payload(digest, trusted_id), signature):
            problems.append(Problem(None, "forged_seal", "the export signature does not verify"))
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        problems.append(Problem(None, "malformed", f"export signature line: {exc}"))
    for number, line in enumerate(lines, start=1):
        try:
            obj = json.loads(line.decode("utf-8"))
            if not isinstance(obj, dict) or canonical_json(obj) != line:
                raise ValueError("not canonical JSON")
            kind = obj.get("type")
            if number == 1:
                if kind != "header" or obj.get("format") != EXPORT_FORMAT:
                    raise ValueError("the first line is not an export header")
                header = obj
            elif kind == "entry":
                entries.append(_parse_entry(obj))
            elif kind == "seal":
                seals.append(_parse_seal(obj))
            else:
                raise ValueError(f"unknown record type {kind!r}")
        except (ValueError, TypeError, UnicodeDecodeError) as exc:
            problems.append(Problem(None, "malformed", f"line {number}: {exc}"))
    if header is None:
        problems.append(Problem(None, "malformed", "no export header"))
        return VerifyReport(len(entries), len(seals), 1, 0, 0, tuple(problems))
    from_seq, to_seq = header.get("from_seq"), header.get("to_seq")
    if not isinstance(from_seq, int) or not isinstance(to_seq, int) or not 1 <= from_seq <= to_seq:
        problems.append(Problem(None, "malformed", "the header's range is invalid"))
        return VerifyReport(len(entries), len(seals), 1, 0, 0, tuple(problems))
    if header.get("key_id") != trusted_id:
        problems.append(Problem(None, "key_mismatch", "the export was sealed under another key id"))
    embedded = header.get("public_key_pem")
    try:
        embedded_id = public_key_id(embedded) if isinstance(embedded, str) else None
    except (ValueError, UnicodeEncodeError):
        embedded_id = None
    if embedded_id != trusted_id:
        problems.append(Problem(None, "key_mismatch", "the embedded public key is not the trusted key"))
    for s in seals:
        if not from_seq <= s.seq <= to_seq:
            problems.append(Problem(s.seq, "range", f"seal at seq {s.seq} is outside the exported range"))
    for e in entries:
        if not from_seq <= e.seq <= to_seq:
            problems.append(Problem(e.seq, "range", f"entry {e.seq} is outside the exported range"))
    anchor = GENESIS_HASH if from_seq == 1 else None
    checker = _ChainVerifier(from_seq, anchor, seals, {trusted_id: _pem_bytes(pub_pem)})
    checker.problems.extend(problems)
    for e in entries:  # in file order: the format writes them ascending, so a reordering is a problem
        checker.feed(e)
    return checker.finish(require_sealed=True, expected_last=to_seq)


def _pem_bytes(pub_pem: bytes | str) -> bytes:
    return pub_pem.encode("ascii") if isinstance(pub_pem, str) else bytes(pub_pem)


def _report_text(report: VerifyReport) -> str:
    lines = [
        f"{'OK' if report.ok else 'FAILED'}: {report.entries} entries (seq {report.first_seq}.."
        f"{report.last_seq}), {report.seals} seals, sealed through seq {report.sealed_through}"
    ]
    if report.ok and report.unsealed_from is not None:
        lines.append(f"warning: entries {report.unsealed_from}..{report.last_seq} are not sealed yet")
    lines += [f"  seq {p.seq if p.seq is not None else '-'}: {p.kind}: {p.detail}" for p in report.problems]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.release.audit verify-export FILE --public-key PEM [--json]``; exit 0 if valid."""
    parser = argparse.ArgumentParser(prog="python -m gateway.release.audit", description="offline audit export check")
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify-export", help="verify an exported audit range against a public key")
    v.add_argument("file")
    v.add_argument("--public-key", required=True, help="the gateway's public key PEM file")
    v.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = verify_export(Path(args.file), Path(args.public_key).read_bytes())
    print(json.dumps(report.to_json_obj(), indent=2) if args.json else _report_text(report))
    return 0 if report.ok else 1



if __name__ == "__main__":
    sys.exit(main())
