"""An enterprise trains and evaluates DP models through ModelService (generated stubs only).

    python examples/model_client.py --target 127.0.0.1:50051 --tls-dir .state/certs --as acme-bank-analyst
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

import grpc
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import model_service_pb2 as m_pb
from privacy_gateway.v1 import model_service_pb2_grpc as m_grpc


def main() -> int:
    """Train a linear and a logistic model, then evaluate the logistic one."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="127.0.0.1:50051")
    ap.add_argument("--tls-dir", default=".state/certs")
    ap.add_argument("--as", dest="identity", default="acme-bank-analyst")
    args = ap.parse_args()
    tls = Path(args.tls_dir)
    creds = grpc.ssl_channel_credentials(
        root_certificates=(tls / "ca.crt").read_bytes(),
        private_key=(tls / f"{args.identity}.key").read_bytes(),
        certificate_chain=(tls / f"{args.identity}.crt").read_bytes())
    stub = m_grpc.ModelServiceStub(grpc.secure_channel(args.target, creds))
    common = dict(dataset="registry", purpose="credit-risk", table="residents")
    try:
        lin = stub.TrainModel(m_pb.TrainModelRequest(
            **common, request_id=uuid.uuid4().hex, kind=m_pb.MODEL_KIND_LINEAR,
            features=["birth_year", "employed"], label="income",
            privacy_loss=common_pb.PrivacyLoss(epsilon=1.0)))
        print("income ~ birth_year + employed (epsilon 1):")
        for e in [*lin.coefficients, lin.intercept, *lin.metrics]:
            ci = f" [{e.ci_lower:,.4g}, {e.ci_upper:,.4g}]" if e.has_interval else ""
            print(f"  {e.name:<12} {e.value:,.6g}{ci}")
        log = stub.TrainModel(m_pb.TrainModelRequest(
            **common, request_id=uuid.uuid4().hex, kind=m_pb.MODEL_KIND_LOGISTIC,
            features=["birth_year", "income", "sex"], label="employed",  # 8 Newton steps by default
            privacy_loss=common_pb.PrivacyLoss(epsilon=1.0, delta=1e-6)))
        print(f"employed ~ birth_year + income + sex: charged {log.privacy_cost.epsilon:.4f}, "
              f"delta {log.privacy_cost.delta:g}")
        ev = stub.EvaluateModel(m_pb.EvaluateModelRequest(
            **common, request_id=uuid.uuid4().hex, kind=m_pb.MODEL_KIND_LOGISTIC, label="employed",
            coefficients=[m_pb.Coefficient(term=c.name, value=c.value) for c in log.coefficients],
            intercept=log.intercept.value, thresholds=[0.5], privacy_loss=common_pb.PrivacyLoss(epsilon=0.5)))
        for m in ev.metrics:
            print(f"  {m.name:<10} {m.value:,.4f} [{m.ci_lower:,.4f}, {m.ci_upper:,.4f}]")
        print(f"model budget left: {ev.budget.remaining.epsilon:.4f}")
    except grpc.RpcError as exc:
        print(f"{exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
