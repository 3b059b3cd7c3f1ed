"""Operator pages (role `operator`): organisations, members and grants with their budgets, revocation and
reinstatement with confirmation, grant adjustments, usage and billing by use class with CSV export, alerts.

Each action is its AdminService RPC through the governed entry point (so it is audited as that RPC), and
each confirmation page is a plain GET that changes nothing: the change happens only on its CSRF-protected POST.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from privacy_gateway.v1 import admin_service_pb2 as a_pb
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from gateway.console.app import Console
from gateway.console.charts import RHO, bar_chart, budget_bar
from gateway.errors import InvalidArgumentError

__all__ = ["ROUTES"]

# action -> (RPC, request field, what the confirmation says)
ACTIONS: dict[str, tuple[str, str, str]] = {
    "revoke-member": ("AdminService/RevokeMember", "identity", "Revoke member"),
    "reinstate-member": ("AdminService/ReinstateMember", "identity", "Reinstate member"),
    "revoke-organization": ("AdminService/RevokeOrganization", "organization", "Revoke organisation"),
    "reinstate-organization": ("AdminService/ReinstateOrganization", "organization", "Reinstate organisation"),
}
_REQUESTS = {"AdminService/RevokeMember": a_pb.RevokeMemberRequest,
             "AdminService/ReinstateMember": a_pb.ReinstateMemberRequest,
             "AdminService/RevokeOrganization": a_pb.RevokeOrganizationRequest,
             "AdminService/ReinstateOrganization": a_pb.ReinstateOrganizationRequest}


def _grant_view(g: a_pb.GrantSummary) -> dict[str, Any]:
    b = g.budget
    rho = b.privacy_definition == "zcdp"
    unit = RHO if rho else "ε"

    def amount(loss: Any) -> float:
        return float(loss.rho if rho else loss.epsilon)

    until = f"; refreshes {b.refreshes_at}" if b.refreshes_at else ""
    return {"dataset": g.dataset, "purpose": g.purpose, "use_class": g.use_class, "adjusted": g.adjusted,
            "definition": b.privacy_definition, "period": b.period, "refreshes": b.refreshes_at,
            "spent": amount(b.spent), "budget": amount(b.budget), "remaining": amount(b.remaining), "unit": unit,
            "max_per_query": amount(b.max_per_query),
            "chart": budget_bar("organisation", amount(b.spent), amount(b.budget), unit=unit, note=until),
            "members": [{"member": m.member, "chart": budget_bar(m.member, amount(m.spent), amount(m.budget),
                                                                   unit=unit)} for m in g.members]}


async def organizations(console: Console, request: Request) -> Response:
    """Every organisation: members with roles and revocation, grants with this period's budget charts."""
    resp = await console.call(request, "AdminService/ListOrganizations", a_pb.ListOrganizationsRequest())
    alerts = await console.call(request, "AdminService/ListAlerts", a_pb.ListAlertsRequest(limit=1))
    orgs = [{"o": o, "grants": [_grant_view(g) for g in o.grants]} for o in resp.organizations]
    return console.page(request, "operator_orgs.html", {"title": "Organisations", "orgs": orgs,
                                                         "pending_alerts": alerts.unacknowledged,
                                                         "done": request.query_params.get("done", "")})


async def confirm(console: Console, request: Request) -> Response:
    """GET: what the action will do, with the button that does it. POST: do it, then back to the list."""
    action = request.path_params["action"]
    if action not in ACTIONS:
        raise InvalidArgumentError(f"unknown action {action!r}", field="action")
    method, field, label = ACTIONS[action]
    if request.method == "GET":
        subject = request.query_params.get("subject", "")
        return console.page(request, "operator_confirm.html", {
            "title": label, "label": label, "subject": subject, "action": action,
            "revoke": action.startswith("revoke")})
    form = await console.form(request)
    if isinstance(form, Response):
        return form
    subject = str(form.get("subject") or "")
    reason = str(form.get("reason") or "")
    await console.call(request, method, _REQUESTS[method](**{field: subject, "reason": reason}))
    return RedirectResponse(f"/operator/organizations?done={action}", status_code=303)


async def adjust(console: Console, request: Request) -> Response:
    """POST: AdjustGrant with the fields given (an empty field keeps its value)."""
    form = await console.form(request)
    if isinstance(form, Response):
        return form
    fields: dict[str, Any] = {k: str(form.get(k) or "") for k in ("organization", "dataset", "purpose")}
    for name in ("epsilon", "max_epsilon_per_query", "rho", "max_rho_per_query"):
        raw = str(form.get(name) or "").strip()
        if raw:
            try:
                fields[name] = float(raw)
            except ValueError:
                raise InvalidArgumentError(f"{name} must be a number", field=name) from None
    await console.call(request, "AdminService/AdjustGrant", a_pb.AdjustGrantRequest(**fields))
    return RedirectResponse("/operator/organizations?done=adjust", status_code=303)


def _usage(report: dict[str, Any]) -> dict[str, Any]:
    by_class: dict[str, dict[str, Any]] = {}
    for r in report.get("rows", []):
        c = by_class.setdefault(r["use_class"] or "-", {"requests": 0, "epsilon": Decimal(0), "price": {}})
        c["requests"] += r["requests"]
        c["epsilon"] += Decimal(r["epsilon"])
        cur = r["currency"] or "-"
        c["price"][cur] = c["price"].get(cur, Decimal(0)) + Decimal(r["price"])
    return by_class


async def usage(console: Console, request: Request) -> Response:
    """Usage and billing for a range (default: this calendar month), by use class and by row; CSV export."""
    start, end = request.query_params.get("start", ""), request.query_params.get("end", "")
    resp = await console.call(request, "AdminService/GetUsage", a_pb.GetUsageRequest(period_start=start,
                                                                                     period_end=end))
    if request.url.path.endswith(".csv"):
        return Response(resp.csv, media_type="text/csv; charset=utf-8",
                        headers={"content-disposition": 'attachment; filename="usage.csv"'})
    report = json.loads(resp.json)
    by_class = _usage(report)
    chart = bar_chart("Privacy loss by use class", [(k, float(v["epsilon"])) for k, v in sorted(by_class.items())],
                      unit="ε")
    orgs: dict[str, float] = {}
    for r in report.get("rows", []):
        orgs[r["organization"]] = orgs.get(r["organization"], 0.0) + float(r["epsilon"])
    return console.page(request, "operator_usage.html", {
        "title": "Usage and billing", "report": report, "by_class": by_class, "chart": chart,
        "org_chart": bar_chart("Privacy loss by organisation", sorted(orgs.items()), unit="ε"),
        "start": start, "end": end, "csv_query": request.url.query})


async def alerts(console: Console, request: Request) -> Response:
    """GET: the alerts (unacknowledged first; `?all=1` for every one). POST: acknowledge one."""
    if request.method == "POST":
        form = await console.form(request)
        if isinstance(form, Response):
            return form
        try:
            alert_id = int(str(form.get("id") or ""))
        except ValueError:
            raise InvalidArgumentError("id must be an alert id", field="id") from None
        await console.call(request, "AdminService/AcknowledgeAlert",
                           a_pb.AcknowledgeAlertRequest(id=alert_id, note=str(form.get("note") or "")))
        return RedirectResponse("/operator/alerts?all=1", status_code=303)
    every = request.query_params.get("all") == "1"
    resp = await console.call(request, "AdminService/ListAlerts",
                              a_pb.ListAlertsRequest(include_acknowledged=every, limit=200))
    return console.page(request, "operator_alerts.html", {"title": "Alerts", "alerts": list(resp.alerts),
                                                          "pending": resp.unacknowledged, "all": every})


ROUTES = [
    ("/operator/organizations", organizations, ["GET"]),
    ("/operator/confirm/{action}", confirm, ["GET", "POST"]),
    ("/operator/grants/adjust", adjust, ["POST"]),
    ("/operator/usage", usage, ["GET"]),
    ("/operator/usage.csv", usage, ["GET"]),
    ("/operator/alerts", alerts, ["GET", "POST"]),
]
