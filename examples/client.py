"""An enterprise's client session: what a consumer of the gateway would copy and adapt.

It needs only the stubs generated from proto/ (`privacy_gateway.v1`), grpcio and grpcio-status, and the
consumer's certificate, key and the gateway's CA. Run:

    python examples/client.py --target 127.0.0.1:50051 --tls-dir .state/certs --as acme-bank-analyst
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from privacy_gateway.v1 import budget_service_pb2 as b_pb
from privacy_gateway.v1 import budget_service_pb2_grpc as b_grpc
from privacy_gateway.v1 import catalog_service_pb2 as cat_pb
from privacy_gateway.v1 import catalog_service_pb2_grpc as cat_grpc
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import query_service_pb2 as q_pb
from privacy_gateway.v1 import query_service_pb2_grpc as q_grpc
from privacy_gateway.v1 import receipt_pb2
from privacy_gateway.v1 import receipt_pb2_grpc as key_grpc

DATASET = "registry"
PURPOSE = "credit-risk"

QUERIES = [
    ("How many residents are in the registry?", "SELECT COUNT(*) AS residents FROM residents", 0.2),
    (
        "Average income of people born in the 1980s",
        "SELECT AVG(income) AS avg_income FROM residents WHERE birth_year BETWEEN 1980 AND 1989",
        0.3,
    ),
    (
        "Employed residents and their total income, by sex",
        "SELECT sex, COUNT(*) AS people, SUM(income) AS total_income FROM residents "
        "WHERE employed GROUP BY sex",
        0.3,
    ),
    (
        "Social-insurance contributions per month (first half of 2025)",
        "SELECT month, SUM(contribution) AS contributions FROM social_insurance "
        "WHERE month IN ('2025-01', '2025-02', '2025-03', '2025-04', '2025-05', '2025-06') "
        "GROUP BY month",
        0.3,
    ),
]


def connect(target: str, tls_dir: Path, identity: str) -> grpc.Channel:
    """An mTLS channel: our certificate proves who we are; the CA proves who the gateway is."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=(tls_dir / "ca.crt").read_bytes(),
        private_key=(tls_dir / f"{identity}.key").read_bytes(),
        certificate_chain=(tls_dir / f"{identity}.crt").read_bytes(),
    )
    return grpc.secure_channel(target, creds)


def explain_error(error: grpc.RpcError) -> str:
    """Status code, ErrorInfo reason and message of a failed call."""
    reason = ""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
    return f"{error.code().name} ({reason}): {error.details()}"  # type: ignore[attr-defined]


def cell_text(cell: q_pb.Cell) -> str:
    """A value, with its 95% interval when it is noisy."""
    kind = cell.WhichOneof("value")
    value = getattr(cell, kind) if kind and kind != "null_value" else "NULL"
    text = f"{value:,.1f}" if isinstance(value, float) else f"{value}"
    if cell.HasField("confidence_interval"):
        ci = cell.confidence_interval
        text += f"  (95% CI {ci.lower:,.1f} .. {ci.upper:,.1f}, noise sd {cell.noise.stddev:,.1f})"
    return text


def print_answer(resp: q_pb.RunQueryResponse) -> None:
    """Print rows, the privacy cost and what is left."""
    for row in resp.rows:
        cells = [f"{c.name}={cell_text(v)}" for c, v in zip(resp.columns, row.cells, strict=True)]
        print("    " + " | ".join(cells))
    spent = resp.budget.spent.epsilon
    print(
        f"    cost: epsilon {resp.privacy_cost.epsilon:.4f} "
        f"({len(resp.plan.releases)} release(s): "
        + ", ".join(f"{r.output}.{r.component} {r.privacy_loss.epsilon:.3f}"
                    for r in resp.plan.releases)
        + f"); budget spent {spent:.4f}, remaining {resp.budget.remaining.epsilon:.4f}"
        + (" [replayed]" if resp.replayed else "")
    )


def receipt_is_valid(receipt: receipt_pb2.Receipt, public_key_pem: str) -> bool:
    """Check an Ed25519 receipt signature over its exact payload bytes (what any third party can do)."""
    key = serialization.load_pem_public_key(public_key_pem.encode())
    assert isinstance(key, ed25519.Ed25519PublicKey)
    try:
        key.verify(receipt.signature, receipt.payload_json.encode())
    except InvalidSignature:
        return False
    return True


def main() -> int:
    """The session."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--tls-dir", type=Path, required=True)
    parser.add_argument("--as", dest="identity", default="acme-bank-analyst")
    args = parser.parse_args()
    channel = connect(args.target, args.tls_dir, args.identity)
    catalog = cat_grpc.CatalogServiceStub(channel)
    budget = b_grpc.BudgetServiceStub(channel)
    queries = q_grpc.QueryServiceStub(channel)

    print(f"== datasets visible to {args.identity}")
    for d in catalog.ListDatasets(cat_pb.ListDatasetsRequest()).datasets:
        tables = ", ".join(t.name for t in d.tables)
        print(f"   {d.name}: {d.description} (tables: {tables}; privacy unit: {d.privacy_unit})")
    status = budget.GetPrivacyBudget(b_pb.GetPrivacyBudgetRequest(dataset=DATASET)).grants[0]
    print(f"== budget on {DATASET}/{status.purpose}: epsilon {status.remaining.epsilon:g} "
          f"of {status.budget.epsilon:g} left, at most {status.max_per_query.epsilon:g} per query")

    sql = QUERIES[1][1]
    ex = queries.ExplainQuery(q_pb.ExplainQueryRequest(
        dataset=DATASET, sql=sql, purpose=PURPOSE, privacy_loss=common_pb.PrivacyLoss(epsilon=0.3)))
    print("== explain (free): " + sql)
    for r in ex.plan.releases:
        print(f"    {r.output}.{r.component}: {r.mechanism}, sensitivity {r.sensitivity:g}, "
              f"scale {r.scale:.4g}, epsilon {r.privacy_loss.epsilon:.4f}, "
              f"±{r.half_width_95:.4g} at 95%")

    first_id = ""
    for title, sql, epsilon in QUERIES:
        request_id = str(uuid.uuid4())
        first_id = first_id or request_id
        print(f"== {title}\n   {sql}")
        resp = queries.RunQuery(q_pb.RunQueryRequest(
            dataset=DATASET, sql=sql, purpose=PURPOSE, request_id=request_id,
            privacy_loss=common_pb.PrivacyLoss(epsilon=epsilon)))
        print_answer(resp)

    print("== retrying the first request with the same request_id (same answer, no new charge)")
    resp = queries.RunQuery(q_pb.RunQueryRequest(
        dataset=DATASET, sql=QUERIES[0][1], purpose=PURPOSE, request_id=first_id,
        privacy_loss=common_pb.PrivacyLoss(epsilon=QUERIES[0][2])))
    print_answer(resp)

    print("== verifying the first answer's signed receipt offline with the gateway's public key")
    key = key_grpc.KeyServiceStub(channel).GetPublicKey(receipt_pb2.GetPublicKeyRequest())
    print(f"    receipt key id {resp.receipt.key_id}: "
          + ("signature valid" if receipt_is_valid(resp.receipt, key.public_key_pem)
             else "SIGNATURE INVALID"))

    print("== a query that would release rows is refused before anything runs")
    try:
        queries.RunQuery(q_pb.RunQueryRequest(
            dataset=DATASET, sql="SELECT * FROM residents", purpose=PURPOSE,
            privacy_loss=common_pb.PrivacyLoss(epsilon=0.1)))
        print("    unexpectedly answered")
        return 1
    except grpc.RpcError as exc:
        print("    refused: " + explain_error(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
