"""`pgw audit ...`, `pgw receipt verify`, `pgw keys export`: operator and auditor commands, on the gateway's state
directory or, with client options (`--target`, `--as`), against a running gateway.

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


def _remote(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "identity", None) or getattr(args, "target", None))


def _export_pages(args: argparse.Namespace, stub: Any, pem: str, workdir: Path) -> dict[str, Any]:
    """Fetch the whole log as signed export pages (ExportAuditLog) and verify each one here, against ``pem``, and
    that each page continues the chain of the one before it."""
    from privacy_gateway.v1 import audit_service_pb2 as au_pb

    from gateway.release.audit import verify_export

    problems: list[str] = []
    pages = entries = seals = 0
    start, target, through, last_hash = 1, None, 0, None
    while True:
        resp = stub.ExportAuditLog(au_pb.ExportAuditLogRequest(from_seq=start, max_entries=args.page_entries))
        target = resp.last_seq if target is None else target
        if resp.to_seq == 0:
            break
        path = workdir / f"page-{pages + 1}.jsonl"
        path.write_bytes(resp.export)
        report = verify_export(path, pem)
        pages, entries, seals = pages + 1, entries + report.entries, seals + report.seals
        problems += [f"seq {p.seq if p.seq is not None else '-'}: {p.kind}: {p.detail}" for p in report.problems]
        records = [json.loads(line) for line in resp.export.splitlines() if line.strip()]
        chain = [r for r in records if r.get("type") == "entry"]
        if chain and last_hash is not None and chain[0].get("prev_hash") != last_hash:
            problems.append(f"seq {chain[0].get('seq')}: broken_chain: page {pages} does not continue page "
                            f"{pages - 1}")
        last_hash = chain[-1].get("hash") if chain else last_hash
        through = resp.to_seq
        if resp.to_seq >= target:
            break
        start = resp.to_seq + 1
    return {"ok": not problems and entries == through, "entries": entries, "through_seq": through, "seals": seals,
            "pages": pages, "problems": problems[:100]}


def _cmd_audit_verify_remote(args: argparse.Namespace) -> int:
    """VerifyAuditLog (the gateway's own check: chain, MACs, seals, ledger accounting), then the whole log fetched
    as signed pages (ExportAuditLog) and verified here against the gateway's public key: pinned with
    --public-key, else fetched from KeyService."""
    import tempfile

    from privacy_gateway.v1 import audit_service_pb2 as au_pb
    from privacy_gateway.v1 import audit_service_pb2_grpc as au_grpc

    from gateway.cli.client import channel_for_args
    from gateway.cli.receipts import fetch_public_key
    from pgw_client.receipts import key_id_of_pem

    stub = au_grpc.AuditServiceStub(channel_for_args(args))  # type: ignore[no-untyped-call]
    server = stub.VerifyAuditLog(au_pb.VerifyAuditLogRequest(require_sealed=args.require_sealed))
    if args.public_key:
        pem, source = Path(args.public_key).read_text(encoding="ascii"), f"pinned ({args.public_key})"
        key_id = key_id_of_pem(pem)
    else:
        key_id, pem = fetch_public_key(args)
        source = "fetched from the gateway (KeyService)"
    local: dict[str, Any] = {"ok": False, "problems": ["not checked: the gateway reports problems"]}
    if server.chain_ok:
        with tempfile.TemporaryDirectory(prefix="pgw-audit-") as tmp:
            local = _export_pages(args, stub, pem, Path(tmp))
    local.update(key_id=key_id, key=source)
    ok = server.chain_ok and server.accounts_ok and bool(local["ok"])
    if args.json:
        gateway: dict[str, Any] = {f.name: getattr(server, f.name) for f in server.DESCRIPTOR.fields}
        gateway.update({k: list(gateway[k]) for k in ("unaudited", "unmatched", "different", "duplicated")})
        gateway["problems"] = [{"seq": p.seq, "kind": p.kind, "detail": p.detail} for p in server.problems]
        print(json.dumps({"ok": ok, "gateway": gateway, "independent": local}, indent=2))
        return 0 if ok else 1
    print(f"{'OK' if server.chain_ok else 'FAILED'}: the gateway's check of its log: {server.entries} entries, "
          f"{server.seals} seals, sealed through seq {server.sealed_through}")
    for p in server.problems:
        print(f"  seq {p.seq or '-'}: {p.kind}: {p.detail}")
    print(f"{'OK' if server.accounts_ok else 'FAILED'}: the log accounts for {server.charges} settled charges of "
          f"the ledger ({server.grant_months} grant-months; {server.in_flight} in flight)")
    for what, items in (("charged, not audited", server.unaudited), ("audited, not in the ledger", server.unmatched),
                        ("audited with another cost", server.different), ("audited twice", server.duplicated)):
        if items:
            print(f"  {what}: {len(items)} (e.g. {', '.join(list(items)[:3])})")
    if local["ok"]:
        print(f"OK: verified here: entries 1..{local['through_seq']} in {local['pages']} signed page(s), "
              f"{local['seals']} seals, under key {key_id} {source}")
    else:
        print(f"FAILED: verified here under key {key_id} {source}:")
        for problem in local["problems"]:
            print(f"  {problem}")
    return 0 if ok else 1


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Verify the whole audit log: chain, entry MACs and seals; and that it accounts for every charge of the
    ledger (one entry per settled charge, with its cost; totals per grant and month equal). With client options,
    against a running gateway (`_cmd_audit_verify_remote`)."""
    from gateway.release.accounting import reconcile

    if _remote(args):
        return _cmd_audit_verify_remote(args)

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

    def common(p: argparse.ArgumentParser, state: bool = True, json: bool = True) -> None:
        if state:
            p.add_argument("--state-dir", help="the gateway's state directory (default: settings)")
            p.add_argument("--storage-url", help="the gateway's PostgreSQL storage (default: the storage_url "
                                                 "setting; empty: SQLite in the state directory)")
        if json:
            p.add_argument("--json", action="store_true", help="print JSON")

    audit = subparsers.add_parser("audit", help="verify and export the signed audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    v = audit_sub.add_parser("verify", help="verify the hash chain, entry MACs and seals, and that the log accounts "
                                            "for every charge of the ledger: in the state directory, or with "
                                            "--target/--as against a running gateway (as an auditor)")
    common(v, json=False)
    add_client_args(v, help_json="print JSON")
    v.add_argument("--public-key", help="with --target/--as: the gateway's public key PEM to verify the exported "
                                        "log against (pgw keys export); default: fetched from the gateway")
    v.add_argument("--page-entries", type=int, default=0, help=argparse.SUPPRESS)  # export page size (tests)
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
