"""`pgw audit ...`, `pgw receipt verify`, `pgw keys export`: operator and auditor commands (no gRPC).

``register(subparsers)`` adds the commands to ``pgw``'s parser (wired in ``gateway/cli/main.py``). Every
command prints readable text, or JSON with ``--json``; exit status 0 means valid, 1 invalid or failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli.client import add_client_args

if TYPE_CHECKING:
    from gateway.release.audit import AuditLog, VerifyReport

__all__ = ["register"]


def _state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir:
        return Path(args.state_dir)
    from gateway.settings import load_settings

    return load_settings().state_dir


def _open_audit(args: argparse.Namespace) -> AuditLog:
    """The audit log in the gateway's storage: `--storage-url` (or the storage_url setting), else the ledger
    file in the state directory (whose keys check the MACs and seals either way)."""
    from gateway.release.audit import AuditLog
    from gateway.release.oversight import AUDIT_FILE
    from gateway.release.signing import Signer, load_or_create_hmac_key
    from gateway.storage.pg import storage_location

    state = _state_dir(args)
    url = getattr(args, "storage_url", None)
    if url is None:
        from gateway.settings import load_settings

        url = load_settings().storage_url
    location = storage_location(url, state / AUDIT_FILE)
    if isinstance(location, Path) and not location.exists():
        raise SystemExit(f"no audit log at {location}")
    return AuditLog(location, Signer.load_or_create(state), load_or_create_hmac_key(state))


def _print_report(report: VerifyReport, as_json: bool) -> int:
    if as_json:
        print(json.dumps(report.to_json_obj(), indent=2))
    else:
        status = "OK" if report.ok else "FAILED"
        print(f"{status}: {report.entries} entries (seq {report.first_seq}..{report.last_seq}), "
              f"{report.seals} seals, sealed through seq {report.sealed_through}")
        if report.ok and report.unsealed_from is not None:
            print(f"note: entries {report.unsealed_from}..{report.last_seq} are not sealed yet "
                  "(they are sealed every N entries and at clean shutdown)")
        for p in report.problems:
            print(f"  seq {p.seq if p.seq is not None else '-'}: {p.kind}: {p.detail}")
        if report.first_bad_seq is not None:
            print(f"first bad seq: {report.first_bad_seq}")
    return 0 if report.ok else 1


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Verify the whole audit log: chain, entry MACs and seals; and that it accounts for every charge of the
    ledger (one entry per settled charge, with its cost; totals per grant and month equal)."""
    from gateway.release.accounting import reconcile

    with _open_audit(args) as audit:
        report = audit.verify(require_sealed=args.require_sealed)
        path = audit.path
    accounts = reconcile(path)
    if args.json:
        print(json.dumps({**report.to_json_obj(), "ledger": accounts.to_json_obj()}, indent=2))
        return 0 if report.ok and accounts.ok else 1
    status = _print_report(report, False)
    grants = len(accounts.grants)
    charges = sum(g.charges for g in accounts.grants)
    if accounts.ok:
        print(f"OK: the audit log accounts for all {charges} settled charges of the ledger "
              f"({grants} grant-months, totals equal; {accounts.in_flight} in flight)")
        return status
    print(f"FAILED: the audit log does not account for the ledger's charges ({accounts.in_flight} in flight)")
    for what, items in (("charged, not audited", accounts.unaudited),
                        ("audited, not in the ledger", accounts.unmatched),
                        ("audited with another cost", accounts.different),
                        ("audited twice", accounts.duplicated)):
        if items:
            print(f"  {what}: {len(items)} (e.g. {', '.join(items[:3])})")
    for g in accounts.grants:
        if not g.equal:
            print(f"  {g.month} {g.consumer}/{g.dataset}/{g.purpose}: ledger epsilon {g.ledger_epsilon!r} "
                  f"delta {g.ledger_delta!r} rho {g.ledger_rho!r}; audit epsilon {g.audit_epsilon!r} "
                  f"delta {g.audit_delta!r} rho {g.audit_rho!r}")
    return 1


def cmd_audit_export(args: argparse.Namespace) -> int:
    """Export a sealed range with the public key, for offline verification."""
    from gateway.release.audit import AuditError

    with _open_audit(args) as audit:
        try:
            out = audit.export(args.from_seq, args.to_seq, Path(args.out))
        except (ValueError, AuditError) as exc:
            print(f"export failed: {exc}", file=sys.stderr)
            return 1
        key_id = audit.public_keys.popitem()[0]
    result = {"file": str(out), "from_seq": args.from_seq, "to_seq": args.to_seq, "key_id": key_id}
    print(json.dumps(result) if args.json else
          f"exported entries {args.from_seq}..{args.to_seq} to {out} (key id {key_id})")
    return 0


def cmd_audit_verify_export(args: argparse.Namespace) -> int:
    """Verify an export offline against a public key."""
    from gateway.release.audit import verify_export

    return _print_report(verify_export(Path(args.file), Path(args.public_key).read_bytes()), args.json)


def cmd_receipt_verify(args: argparse.Namespace) -> int:
    """Verify every receipt in a file, of any kind, with a PEM key file or the key fetched from the gateway."""
    from gateway.cli.receipts import fetch_public_key, verify_receipt_file

    path = Path(args.file or args.receipt or "")
    if not (args.file or args.receipt):
        print("name the receipt file: pgw receipt verify FILE", file=sys.stderr)
        return 2
    if args.public_key:
        return verify_receipt_file(path, public_key=Path(args.public_key), as_json=args.json)
    if not (args.identity or args.target or os.environ.get("PGW_IDENTITY")):
        print("say which key to check against: --public-key PEM (pgw keys export), or the gateway to fetch it "
              "from: --target/--tls-dir/--as (or PGW_TARGET, PGW_TLS_DIR, PGW_IDENTITY)", file=sys.stderr)
        return 2
    _, pem = fetch_public_key(args)
    return verify_receipt_file(path, pem=pem, as_json=args.json)


def cmd_keys_export(args: argparse.Namespace) -> int:
    """Print or write the gateway's public key PEM: fetched from a gateway (KeyService) when client options
    are given, else read from the local state directory (creating the key pair on first use)."""
    if args.identity or args.target:
        from gateway.cli.receipts import fetch_public_key

        key_id, text = fetch_public_key(args)
        pem = text.encode("ascii")
    else:
        from gateway.release.signing import KEYS_DIR, PUBLIC_KEY_FILE, Signer, public_key_id

        state = _state_dir(args)
        pub_path = state / KEYS_DIR / PUBLIC_KEY_FILE
        pem = pub_path.read_bytes() if pub_path.exists() else Signer.load_or_create(state).public_pem
        key_id = public_key_id(pem)
    if args.out:
        Path(args.out).write_bytes(pem)
    if args.json:
        print(json.dumps({"key_id": key_id, "public_key_pem": pem.decode("ascii"), "file": args.out}))
    elif args.out:
        print(f"wrote public key {key_id} to {args.out}")
    else:
        print(f"# key id {key_id}")
        print(pem.decode("ascii"), end="")
    return 0


def register(subparsers: Any) -> None:
    """Adds ``audit``, ``receipt`` and ``keys`` to pgw's subparsers (``parser.add_subparsers()``)."""

    def common(p: argparse.ArgumentParser, state: bool = True) -> None:
        if state:
            p.add_argument("--state-dir", help="the gateway's state directory (default: settings)")
            p.add_argument("--storage-url", help="the gateway's PostgreSQL storage (default: the storage_url "
                                                 "setting; empty: SQLite in the state directory)")
        p.add_argument("--json", action="store_true", help="print JSON")

    audit = subparsers.add_parser("audit", help="verify and export the signed audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    v = audit_sub.add_parser("verify", help="verify the hash chain, entry MACs and seals, and that the log accounts "
                                            "for every charge of the ledger")
    common(v)
    v.add_argument("--require-sealed", action="store_true", help="treat unsealed entries as a failure")
    v.set_defaults(func=cmd_audit_verify)
    e = audit_sub.add_parser("export", help="export a range as JSONL with seals and the public key")
    common(e)
    e.add_argument("--from", dest="from_seq", type=int, required=True)
    e.add_argument("--to", dest="to_seq", type=int, required=True)
    e.add_argument("--out", required=True)
    e.set_defaults(func=cmd_audit_export)
    x = audit_sub.add_parser("verify-export", help="verify an export offline")
    common(x, state=False)
    x.add_argument("file")
    x.add_argument("--public-key", required=True, help="PEM file of the gateway's public key")
    x.set_defaults(func=cmd_audit_verify_export)

    receipt = subparsers.add_parser("receipt", help="verify signed receipts (queries, models, verification)")
    receipt_sub = receipt.add_subparsers(dest="receipt_command", required=True)
    r = receipt_sub.add_parser("verify", help="verify every receipt in a file with the gateway's key (a PEM "
                                              "file, or fetched from the gateway)")
    add_client_args(r, help_json="print JSON")
    r.add_argument("file", nargs="?", help="a receipt file any command wrote (--receipt-out, --receipts-out, "
                                           "pgw query --json)")
    r.add_argument("--receipt", help=argparse.SUPPRESS)  # the file, as an option
    r.add_argument("--public-key", help="PEM file of the gateway's public key (pgw keys export); without it "
                                        "the key is fetched from the gateway")
    r.set_defaults(func=cmd_receipt_verify)

    keys = subparsers.add_parser("keys", help="the gateway's signing key")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    k = keys_sub.add_parser("export", help="print or write the public key PEM (from a gateway with --target/"
                                           "--as, else from the local state directory)")
    k.add_argument("--state-dir", help="the gateway's state directory (default: settings)")
    add_client_args(k)
    k.add_argument("--out", help="write the PEM to this file")
    k.set_defaults(func=cmd_keys_export)
