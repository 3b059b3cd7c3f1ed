"""A bank checks a loan applicant with verification templates, and verifies the receipts offline.

With `make serve` running (example policy: consumer acme-bank-analyst):

    .venv/bin/python -m examples.verify_client --tls-dir .state/certs --id-number 11010519491231002X \\
        --name "张三" --loan-reference LOAN-2026-000123

Any gRPC client generated from proto/privacy_gateway/v1/verification_service.proto does the same.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import grpc
from privacy_gateway.v1 import verification_service_pb2 as v_pb
from privacy_gateway.v1 import verification_service_pb2_grpc as v_grpc

from gateway.cli.client import ClientIdentity, describe_error, secure_channel
from gateway.products.verification.receipts import ReceiptData, load_public_key, verify_receipt

RESULT = {v_pb.VERIFICATION_RESULT_MATCH: "yes", v_pb.VERIFICATION_RESULT_NO_MATCH: "no",
          v_pb.VERIFICATION_RESULT_NOT_FOUND: "not found"}


def main(argv: list[str] | None = None) -> int:
    """Check identity, income (with the loan reference as consent) and insurance history."""
    p = argparse.ArgumentParser(prog="python -m examples.verify_client")
    p.add_argument("--target", default="127.0.0.1:50051")
    p.add_argument("--tls-dir", type=Path, default=Path(".state/certs"))
    p.add_argument("--as", dest="identity", default="acme-bank-analyst")
    p.add_argument("--id-number", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--loan-reference", required=True)
    args = p.parse_args(argv)
    stub = v_grpc.VerificationServiceStub(
        secure_channel(args.target, ClientIdentity.in_dir(args.tls_dir, args.identity)))
    purpose = "loan-application"
    try:
        catalog = stub.ListTemplates(v_pb.ListTemplatesRequest())
        public_key = load_public_key(catalog.receipt_public_key_pem.encode())
        checks = [
            ("identity_match", {"name": v_pb.ParamValue(string_value=args.name)}, ""),
            ("income_at_least", {"threshold": v_pb.ParamValue(int64_value=100000)}, args.loan_reference),
            ("insured_months_at_least", {"months": v_pb.ParamValue(int64_value=6)}, ""),
        ]
        for template, params, case in checks:
            resp = stub.Verify(v_pb.VerifyRequest(dataset="registry", template=template, purpose=purpose,
                                                  subject=args.id_number, parameters=params,
                                                  case_reference=case))
            receipt = ReceiptData.from_pb(resp.receipt)
            ok = verify_receipt(receipt, public_key)  # what an auditor does later, offline
            band = f" ({resp.band})" if resp.band else ""
            print(f"{template:<26} {RESULT[resp.result]}{band}   receipt "
                  f"{'valid' if ok else 'INVALID'}: {json.loads(receipt.payload)['id']}")
    except grpc.RpcError as exc:
        print(describe_error(exc), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
