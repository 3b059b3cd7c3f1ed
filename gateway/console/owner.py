"""Data owner pages (role `data_owner`): each owned dataset's cap and its use over time, spending per
organisation and purpose, its columns by grade with the grade rules, and every request on the owner's datasets.

The figures come from GetCapUsage (the sandbox's own cap ledger, the owner's word, beside the gateway's
mirror) and ListDatasetSpending (every charged, refused and failed request on the owner's datasets).
"""

from __future__ import annotations

from typing import Any

from privacy_gateway.v1 import admin_service_pb2 as a_pb
from starlette.requests import Request
from starlette.responses import Response

from gateway.console.app import Console
from gateway.console.charts import RHO, bar_chart, budget_bar, step_chart

__all__ = ["ROUTES"]


def _amount(measure: str, a: a_pb.CapAmount) -> float:
    return float(a.rho if measure == "rho" else a.epsilon)


def _cap_view(d: a_pb.DatasetCapUsage, entries: list[a_pb.SpendingEntry]) -> dict[str, Any]:
    measure = d.measure or "epsilon"
    unit = RHO if measure == "rho" else "ε"
    cap = _amount(measure, d.per_period) if d.capped else None
    counted = d.sandbox if d.sandbox.available else d.gateway  # the sandbox's ledger is the owner's word
    spent = _amount(measure, counted.period_spent)
    mine = [e for e in entries if e.dataset == d.dataset and e.outcome in ("charged", "failed")
            and (not d.period_start or e.time >= d.period_start)]
    points: list[tuple[str, float]] = []
    total = 0.0
    for e in mine:
        total += e.epsilon
        points.append((e.time[:16].replace("T", " "), total))
    orgs: dict[str, float] = {}
    purposes: dict[str, float] = {}
    for e in entries:
        if e.dataset == d.dataset and e.outcome in ("charged", "failed"):
            orgs[e.organization] = orgs.get(e.organization, 0.0) + e.epsilon
            purposes[f"{e.purpose} ({e.use_class})"] = purposes.get(f"{e.purpose} ({e.use_class})", 0.0) + e.epsilon
    return {
        "d": d, "unit": unit, "cap": cap, "spent": spent, "measure": measure,
        "sandbox_spent": _amount(measure, d.sandbox.period_spent), "sandbox_ok": d.sandbox.available,
        "gateway_spent": _amount(measure, d.gateway.period_spent),
        "lifetime_spent": _amount(measure, counted.lifetime_spent),
        "lifetime_cap": _amount(measure, d.lifetime) if d.HasField("lifetime") else None,
        "bar": budget_bar(f"{d.dataset} this {d.period or 'period'}", spent, cap, unit=unit) if cap else "",
        "over_time": step_chart(f"{d.dataset}: ε charged this period (gateway's record of each request)", points,
                                cap=cap if measure == "epsilon" else None),
        "by_org": bar_chart("Spending per organisation", sorted(orgs.items()), unit="ε"),
        "by_purpose": bar_chart("Spending per purpose", sorted(purposes.items()), unit="ε"),
        "grades": _grades(d),
    }


def _grades(d: a_pb.DatasetCapUsage) -> list[tuple[str, str]]:
    """(grade, its columns as `table.column`) for the grades the dataset's columns carry, in catalog order."""
    by_grade: dict[str, list[str]] = {}
    for c in d.columns:
        by_grade.setdefault(c.grade, []).append(f"{c.table}.{c.column}")
    return [(g, ", ".join(cols)) for g, cols in by_grade.items()]


async def overview(console: Console, request: Request) -> Response:
    """The caller's datasets: caps, use this period and over time, spending per organisation and purpose."""
    caps = await console.call(request, "AdminService/GetCapUsage", a_pb.GetCapUsageRequest())
    spending = await console.call(request, "AdminService/ListDatasetSpending", a_pb.ListDatasetSpendingRequest())
    entries = list(spending.entries)
    return console.page(request, "owner.html", {
        "title": "My datasets", "datasets": [_cap_view(d, entries) for d in caps.datasets], "at": caps.at,
        "recent": list(reversed(entries))[:50],
        "grade_rules": [(r.grade, ", ".join(r.uses).replace("_", " ") or "never usable") for r in caps.grade_rules]})


ROUTES = [("/owner", overview, ["GET"])]
