"""`pgw train` and `pgw evaluate`: the ModelService from the command line (wired by `register`)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from gateway.cli.client import add_client_args, channel_for_args, reports_rpc_errors
from gateway.cli.jsonout import message_to_json
from gateway.cli.lazy import lazy_module

if TYPE_CHECKING:
    from privacy_gateway.v1 import common_pb2 as common_pb
    from privacy_gateway.v1 import model_service_pb2 as m_pb
    from privacy_gateway.v1 import model_service_pb2_grpc as m_grpc
else:
    common_pb = lazy_module("privacy_gateway.v1.common_pb2")
    m_pb = lazy_module("privacy_gateway.v1.model_service_pb2")
    m_grpc = lazy_module("privacy_gateway.v1.model_service_pb2_grpc")

_KINDS = ("linear", "logistic")


def _kind(name: str) -> m_pb.ModelKind:
    return {"linear": m_pb.MODEL_KIND_LINEAR, "logistic": m_pb.MODEL_KIND_LOGISTIC}[name]


def _stub(args: argparse.Namespace) -> m_grpc.ModelServiceStub:
    return m_grpc.ModelServiceStub(channel_for_args(args))  # type: ignore[no-untyped-call]


def _est(e: m_pb.Estimate) -> str:
    ci = f"  [{e.ci_lower:,.6g}, {e.ci_upper:,.6g}]" if e.has_interval else ""
    return f"{e.name:<24} {e.value:,.6g}{ci}"


def _print(resp: m_pb.TrainModelResponse | m_pb.EvaluateModelResponse) -> None:
    if isinstance(resp, m_pb.TrainModelResponse):
        print("coefficients (original units, 95% intervals where computable):")
        for e in [*resp.coefficients, resp.intercept]:
            print("  " + _est(e))
    print("metrics:")
    for e in resp.metrics:
        print("  " + _est(e))
    if isinstance(resp, m_pb.EvaluateModelResponse):
        for m in resp.confusion:
            print(f"  threshold {m.threshold:g}: tp {m.tp.value:,.0f} fp {m.fp.value:,.0f} "
                  f"tn {m.tn.value:,.0f} fn {m.fn.value:,.0f}")
    for r in resp.releases:
        print(f"  release {r.component} ({r.mechanism}, x{r.count}): sensitivity {r.sensitivity:.6g}, "
              f"scale {r.scale:.6g}, epsilon {r.privacy_loss.epsilon:.6g}, delta {r.privacy_loss.delta:g}, "
              f"rho {r.rho:.6g}")
    print(f"charged epsilon {resp.privacy_cost.epsilon:.6f} delta {resp.privacy_cost.delta:g}"
          f"{' (replayed)' if resp.replayed else ''}; remaining {resp.budget.remaining.epsilon:.4f}")


@reports_rpc_errors
def cmd_train(args: argparse.Namespace) -> int:
    """TrainModel."""
    req = m_pb.TrainModelRequest(
        dataset=args.dataset, purpose=args.purpose, request_id=args.request_id or "", table=args.table,
        privacy_loss=common_pb.PrivacyLoss(epsilon=args.epsilon, delta=args.delta),
        features=args.features.split(","), label=args.label, kind=_kind(args.kind),
        iterations=args.iterations, learning_rate=args.learning_rate, clip=args.clip, l2=args.l2)
    resp = _stub(args).TrainModel(req)
    _save_receipt(resp, args.receipt_out)
    print(message_to_json(resp)) if args.json else _print(resp)
    return 0


def _save_receipt(resp: m_pb.TrainModelResponse | m_pb.EvaluateModelResponse, path: str | None) -> None:
    if path and resp.HasField("receipt"):
        from pgw_client.receipts import Receipt

        Receipt.from_proto(resp.receipt).save(path)


@reports_rpc_errors
def cmd_evaluate(args: argparse.Namespace) -> int:
    """EvaluateModel; coefficients as term=value pairs (term is `col` or `col=value`)."""
    coefs = []
    for pair in args.coef:
        term, _, value = pair.rpartition(":")
        coefs.append(m_pb.Coefficient(term=term, value=float(value)))
    req = m_pb.EvaluateModelRequest(
        dataset=args.dataset, purpose=args.purpose, request_id=args.request_id or "", table=args.table,
        privacy_loss=common_pb.PrivacyLoss(epsilon=args.epsilon), kind=_kind(args.kind),
        coefficients=coefs, intercept=args.intercept, label=args.label, thresholds=args.threshold,
        residual_bound=args.residual_bound)
    resp = _stub(args).EvaluateModel(req)
    _save_receipt(resp, args.receipt_out)
    print(message_to_json(resp)) if args.json else _print(resp)
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `train` and `evaluate` to the pgw subcommands."""
    for name in ("train", "evaluate"):
        p = sub.add_parser(name, help=f"{name} a DP model (ModelService)")
        add_client_args(p)
        p.add_argument("--dataset", required=True)
        p.add_argument("--purpose", required=True)
        p.add_argument("--table", required=True)
        p.add_argument("--label", required=True)
        p.add_argument("--kind", choices=_KINDS, required=True)
        p.add_argument("--epsilon", type=float, required=True)
        p.add_argument("--request-id")
        p.add_argument("--receipt-out", metavar="FILE", help="write the signed receipt here (pgw receipt verify)")
        if name == "train":
            p.add_argument("--features", required=True, help="comma-separated feature columns")
            p.add_argument("--delta", type=float, default=0.0)
            p.add_argument("--iterations", type=int, default=0,
                           help="logistic: Newton steps (0: the default, 8)")
            p.add_argument("--learning-rate", type=float, default=0.0,
                           help="logistic: multiplier of each Newton step (0: 1, the full step)")
            p.add_argument("--clip", type=float, default=0.0)
            p.add_argument("--l2", type=float, default=0.0)
            p.set_defaults(func=cmd_train)
        else:
            p.add_argument("--coef", action="append", default=[], help="term:value (repeatable)")
            p.add_argument("--intercept", type=float, default=0.0)
            p.add_argument("--threshold", type=float, action="append", default=[])
            p.add_argument("--residual-bound", type=float, default=0.0)
            p.set_defaults(func=cmd_evaluate)
