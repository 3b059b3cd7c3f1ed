"""The public transparency page and its JSON twin: what is offered and how much it is used.

Only datasets whose owner set `[datasets.X.transparency] publish = true`. Per dataset: its description,
tables and owner, the purposes and use classes it is granted or used for, and per calendar month the
requests answered and refused and the privacy loss charged in all (GetTransparencyReport). Never per
consumer; organisations only when the operator publishes them. These are figures about use, not about the
data: they come from the ledger and the audit records, not from any computation over the registry.
"""

from __future__ import annotations

from privacy_gateway.v1 import audit_service_pb2 as au_pb
from starlette.requests import Request
from starlette.responses import Response

from gateway.console.app import Console
from gateway.console.charts import bar_chart
from gateway.rpc.auditing import report_json

__all__ = ["ROUTES"]


async def page(console: Console, request: Request) -> Response:
    """The report as a page, with privacy loss per month as a chart."""
    report = await console.call(request, "AuditService/GetTransparencyReport", au_pb.GetTransparencyReportRequest())
    datasets = [{"d": d, "chart": bar_chart(f"{d.name}: ε charged per month",
                                            [(p.month, p.epsilon) for p in d.periods], unit="ε"),
                 "answered": sum(p.answered for p in d.periods), "epsilon": sum(p.epsilon for p in d.periods)}
                for d in report.datasets]
    return console.page(request, "public.html", {"title": "Transparency", "datasets": datasets, "at": report.at})


async def twin(console: Console, request: Request) -> Response:
    """The same report as JSON."""
    report = await console.call(request, "AuditService/GetTransparencyReport", au_pb.GetTransparencyReportRequest())
    return Response(report_json(report), media_type="application/json")


ROUTES = [
    ("/transparency", page, ["GET"]),
    ("/transparency.json", twin, ["GET"]),
]
