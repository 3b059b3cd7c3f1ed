"""`pgw verify`, `pgw verify-batch`, `pgw templates` and `pgw verify-receipt` (offline)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.cli.client import add_client_args, channel_for_args, reports_rpc_errors
from gateway.cli.jsonout import message_to_json
from gateway.cli.lazy import lazy_module

if TYPE_CHECKING:
    from privacy_gateway.v1 import verification_service_pb2 as v_pb
    from privacy_gateway.v1 import verification_service_pb2_grpc as v_grpc
else:
    v_pb = lazy_module("privacy_gateway.v1.verification_service_pb2")
    v_grpc = lazy_module("privacy_gateway.v1.verification_service_pb2_grpc")

CHUNK = 5000
_RESULT_NAMES = {1: "MATCH", 2: "NO_MATCH", 3: "NOT_FOUND", 0: ""}  # VerificationResult's values


class _Results:
    def __getitem__(self, value: int) -> str:
        return _RESULT_NAMES.get(int(value), "")


RESULT = _Results()


def param_to_pb(v: Any) -> v_pb.ParamValue:
    """The proto form of a parameter value (what `gateway.rpc.verification.param_from_pb` reads back)."""
    if isinstance(v, bool):
        return v_pb.ParamValue(bool_value=v)
    if isinstance(v, int):
        return v_pb.ParamValue(int64_value=v)
    if isinstance(v, float):
        return v_pb.ParamValue(double_value=v)
    return v_pb.ParamValue(string_value=str(v))


def _stub(args: argparse.Namespace) -> v_grpc.VerificationServiceStub:
    return v_grpc.VerificationServiceStub(channel_for_args(args))


def parse_param(text: str) -> tuple[str, Any]:
    """`name=value`: integers and booleans are typed, anything else is a string."""
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected name=value, got {text!r}")
    typed: Any = value
    if value in ("true", "false"):
        typed = value == "true"
    else:
        try:
            typed = int(value)
        except ValueError:
            try:
                typed = float(value) if any(c in value for c in ".eE") else value
            except ValueError:
                typed = value
    return name, typed


def _receipt_json(receipt: v_pb.VerificationReceipt) -> dict[str, Any]:
    from pgw_client.receipts import Receipt

    return Receipt.from_proto(receipt).to_json()


def _receipt_out(receipt: v_pb.VerificationReceipt, path: str | None) -> None:
    if path:
        Path(path).write_text(json.dumps(_receipt_json(receipt), indent=2) + "\n")


@reports_rpc_errors
def cmd_templates(args: argparse.Namespace) -> int:
    """ListTemplates."""
    resp = _stub(args).ListTemplates(v_pb.ListTemplatesRequest())
    if args.public_key_out:
        Path(args.public_key_out).write_text(resp.receipt_public_key_pem)
    if args.json:
        print(message_to_json(resp))
        return 0
    for t in resp.templates:
        params = ", ".join(
            f"{p.name}:{p.type}" + (f" in {[getattr(v, v.WhichOneof('value') or 'string_value') for v in p.ladder]}"
                                    if p.ladder else f" (max {p.max_length} chars)" if p.max_length else "")
            for p in t.parameters)
        print(f"{t.dataset}.{t.name}  subject {t.subject_format}  params [{params}]  purposes "
              f"{list(t.purposes)}  caps {t.max_checks_per_period}/{t.period}, "
              f"{t.max_checks_per_subject_per_period}/subject/{t.period}"
              f"{'  case reference required' if t.requires_case_reference else ''}")
    print(f"receipts signed by {resp.receipt_key_id}")
    return 0


@reports_rpc_errors
def cmd_verify(args: argparse.Namespace) -> int:
    """Verify: one check."""
    params = dict(args.param or [])
    resp = _stub(args).Verify(v_pb.VerifyRequest(
        dataset=args.dataset, template=args.template, purpose=args.purpose, subject=args.subject,
        case_reference=args.case_reference or "",
        parameters={k: param_to_pb(v) for k, v in params.items()}))
    _receipt_out(resp.receipt, args.receipt_out)
    if args.json:
        print(json.dumps({"result": RESULT[resp.result], "band": resp.band,
                          "receipt": _receipt_json(resp.receipt)}))
    else:
        print(RESULT[resp.result] + (f" ({resp.band})" if resp.band else ""))
    return 0


def read_claims(path: Path) -> list[v_pb.Claim]:
    """claims.csv: a `subject` column, optional `case_reference`, every other column a parameter."""
    claims = []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            subject = row.pop("subject", "") or ""
            case = row.pop("case_reference", "") or ""
            params = dict(parse_param(f"{k}={v}") for k, v in row.items() if k)
            claims.append(v_pb.Claim(subject=subject, case_reference=case,
                                     parameters={k: param_to_pb(v) for k, v in params.items()}))
    return claims


def batch_requests(dataset: str, template: str, purpose: str,
                   claims: list[v_pb.Claim]) -> Iterator[v_pb.VerifyBatchRequest]:
    """The request stream of a batch, in chunks."""
    for k in range(0, max(len(claims), 1), CHUNK):
        yield v_pb.VerifyBatchRequest(dataset=dataset, template=template, purpose=purpose,
                                      claims=claims[k:k + CHUNK])


@reports_rpc_errors
def cmd_verify_batch(args: argparse.Namespace) -> int:
    """VerifyBatch from a CSV file; writes one CSV line per claim (and receipts as JSON lines)."""
    claims = read_claims(Path(args.file))
    results = [r for resp in _stub(args).VerifyBatch(
        batch_requests(args.dataset, args.template, args.purpose, claims)) for r in resp.results]
    out = csv.writer(sys.stdout)
    out.writerow(["index", "status", "result", "band", "message"])
    receipts = open(args.receipts_out, "w", encoding="utf-8") if args.receipts_out else None  # noqa: SIM115
    try:
        for r in results:
            out.writerow([r.index, v_pb.ClaimStatus.Name(r.status)[13:], RESULT[r.result], r.band,
                          r.status_message])
            if receipts is not None and r.HasField("receipt"):
                receipts.write(json.dumps({"index": r.index, **_receipt_json(r.receipt)}) + "\n")
    finally:
        if receipts is not None:
            receipts.close()
    return 0


def cmd_verify_receipt(args: argparse.Namespace) -> int:
    """Offline: check every receipt in a file (one receipt, or a batch's JSON lines) against a public key
    (exit 0 all valid, 1 one invalid). The same as `pgw receipt verify FILE --public-key PEM`."""
    from gateway.cli.receipts import verify_receipt_file

    return verify_receipt_file(Path(args.receipt), public_key=Path(args.public_key), as_json=False)


def register(sub: Any) -> None:
    """Add the verification commands to `pgw`'s subparsers."""

    def client_args(sp: argparse.ArgumentParser) -> None:
        add_client_args(sp)

    t = sub.add_parser("templates", help="list the verification templates you may use")
    client_args(t)
    t.add_argument("--public-key-out", help="write the receipt public key (PEM) here")
    t.set_defaults(func=cmd_templates)

    v = sub.add_parser("verify", help="one yes/no check with a verification template")
    client_args(v)
    v.add_argument("--dataset", required=True)
    v.add_argument("--template", required=True)
    v.add_argument("--purpose", required=True)
    v.add_argument("--subject", required=True, help="resident id number or credit code")
    v.add_argument("--param", action="append", type=parse_param, help="name=value (repeatable)")
    v.add_argument("--case-reference", help="consent or case reference, where the template needs one")
    v.add_argument("--receipt-out", help="write the signed receipt (JSON) here")
    v.set_defaults(func=cmd_verify)

    b = sub.add_parser("verify-batch", help="up to 100,000 checks from a CSV file")
    client_args(b)
    b.add_argument("--dataset", required=True)
    b.add_argument("--template", required=True)
    b.add_argument("--purpose", required=True)
    b.add_argument("--file", required=True, help="CSV: subject[,case_reference],<parameter columns>")
    b.add_argument("--receipts-out", help="write receipts as JSON lines here")
    b.set_defaults(func=cmd_verify_batch)

    r = sub.add_parser("verify-receipt", help="check a receipt offline with the public key")
    r.add_argument("--public-key", required=True, help="PEM file (pgw templates --public-key-out)")
    r.add_argument("receipt", help="a receipt file of any kind (pgw verify --receipt-out, pgw verify-batch "
                                   "--receipts-out, pgw query --receipt-out)")
    r.set_defaults(func=cmd_verify_receipt)
