"""Analyst pages (role `consumer`): datasets, the query page (price, then run), history with receipts.

Every figure comes from the analyst's own RPCs: ListDatasets/GetDataset, GetPrivacyBudget, ExplainQuery,
RunQuery (a charged release: the form carries a request id, so submitting it twice replays the first
answer instead of charging twice), ListMyRequests and GetMyReceipt.
"""

from __future__ import annotations

import math
from typing import Any

from privacy_gateway.v1 import audit_service_pb2 as au_pb
from privacy_gateway.v1 import budget_service_pb2 as b_pb
from privacy_gateway.v1 import catalog_service_pb2 as cat_pb
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import query_service_pb2 as q_pb
from starlette.requests import Request
from starlette.responses import Response

from gateway.console.app import Console, new_request_id
from gateway.console.charts import RHO, Interval, budget_bar, interval_chart
from gateway.errors import GatewayError, InvalidArgumentError
from gateway.release.receipts import Receipt

__all__ = ["ROUTES"]

_TYPES = {1: "int64", 2: "double", 3: "string", 4: "bool"}


def _column_view(c: cat_pb.ColumnSchema) -> dict[str, Any]:
    return {"name": c.name, "type": _TYPES.get(c.type, "?"), "grade": c.grade,
            "bounds": f"{c.lower:g} to {c.upper:g}" if c.has_bounds else "",
            "domain": ", ".join(c.domain[:12]) + (f" (+{len(c.domain) - 12})" if len(c.domain) > 12 else ""),
            "uses": ", ".join(u for u, ok in (("group by", c.groupable), ("sum/avg", c.summable)) if ok),
            "description": c.description}


def _budget_view(b: common_pb.BudgetStatus) -> dict[str, Any]:
    rho = b.privacy_definition == "zcdp"
    unit = RHO if rho else "ε"
    total, spent = (b.budget.rho, b.spent.rho) if rho else (b.budget.epsilon, b.spent.epsilon)
    refresh = f"; refreshes {b.refreshes_at}" if b.refreshes_at else ""
    return {"dataset": b.dataset, "purpose": b.purpose, "definition": b.privacy_definition, "unit": unit,
            "remaining": b.remaining.rho if rho else b.remaining.epsilon, "level": b.limiting_level,
            "refreshes": b.refreshes_at, "chart": budget_bar(f"{b.dataset}/{b.purpose}", spent, total, unit=unit,
                                                             note=refresh)}


async def datasets(console: Console, request: Request) -> Response:
    """The datasets the caller is granted, with their purposes and the budget left on each."""
    listed = await console.call(request, "CatalogService/ListDatasets", cat_pb.ListDatasetsRequest())
    budget = await console.call(request, "BudgetService/GetPrivacyBudget", b_pb.GetPrivacyBudgetRequest())
    return console.page(request, "analyst_datasets.html", {
        "title": "Datasets", "datasets": list(listed.datasets), "budgets": [_budget_view(b) for b in budget.grants]})


async def dataset(console: Console, request: Request) -> Response:
    """One dataset: tables, columns with bounds, domains, grades and allowed uses (Datasette-style)."""
    name = request.path_params["name"]
    d = await console.call(request, "CatalogService/GetDataset", cat_pb.GetDatasetRequest(name=name))
    tables = [{"name": t.name, "max_rows_per_unit": t.max_rows_per_unit,
               "columns": [_column_view(c) for c in t.columns]} for t in d.tables]
    return console.page(request, "analyst_dataset.html", {"title": d.name, "d": d, "tables": tables})


def _number(form: Any, name: str) -> float:
    raw = str(form.get(name) or "").strip()
    try:
        value = float(raw)
    except ValueError:
        raise InvalidArgumentError(f"{name} must be a number", field=name) from None
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgumentError(f"{name} must be a positive number", field=name)
    return value


def _rows(resp: q_pb.RunQueryResponse) -> tuple[list[str], list[list[str]], list[Any]]:
    """Header, rows as text (noisy cells with their interval), and one interval chart per noisy column."""
    names = [c.name for c in resp.columns]
    rows: list[list[str]] = []
    series: dict[int, list[Interval]] = {i: [] for i, c in enumerate(resp.columns) if c.noisy}
    for row in resp.rows:
        keys = [_cell_text(c) for i, c in enumerate(row.cells) if i not in series]
        label = " / ".join(keys) or "all"
        out = []
        for i, cell in enumerate(row.cells):
            text = _cell_text(cell)
            kind = cell.WhichOneof("value")
            if i in series and cell.HasField("confidence_interval") and kind in ("int64_value", "double_value"):
                ci = cell.confidence_interval
                value = float(getattr(cell, kind))
                series[i].append(Interval(label, value, ci.lower, ci.upper))
                text += f" [{ci.lower:.4g}, {ci.upper:.4g}]"
            out.append(text)
        rows.append(out)
    charts = [interval_chart(names[i], items) for i, items in series.items() if items]
    return names, rows, charts


def _cell_text(cell: q_pb.Cell) -> str:
    kind = cell.WhichOneof("value")
    if kind is None or kind == "null_value":
        return "NULL"
    value = getattr(cell, kind)
    return f"{value:.6g}" if kind == "double_value" else str(value)


async def query(console: Console, request: Request) -> Response:
    """GET: the query form. POST: price it (ExplainQuery) or run it (RunQuery)."""
    listed = await console.call(request, "CatalogService/ListDatasets", cat_pb.ListDatasetsRequest())
    budget = await console.call(request, "BudgetService/GetPrivacyBudget", b_pb.GetPrivacyBudgetRequest())
    choices = [f"{d.name}/{p}" for d in listed.datasets for p in d.purposes]
    ctx: dict[str, Any] = {"title": "Query", "choices": choices, "budgets": [_budget_view(b) for b in budget.grants],
                           "sql": "", "grant": choices[0] if choices else "", "loss": "0.5",
                           "request_id": new_request_id()}
    if request.method == "POST":
        form = await console.form(request)
        if isinstance(form, Response):
            return form
        grant = str(form.get("grant") or "")
        dataset, _, purpose = grant.partition("/")
        sql = str(form.get("sql") or "")
        ctx.update(sql=sql, grant=grant, loss=str(form.get("loss") or ""),
                   request_id=str(form.get("request_id") or new_request_id()))
        zcdp = any(b.dataset == dataset and b.purpose == purpose and b.privacy_definition == "zcdp"
                   for b in budget.grants)
        try:
            amount = _number(form, "loss")
            loss = common_pb.PrivacyLoss(rho=amount) if zcdp else common_pb.PrivacyLoss(epsilon=amount)
            if form.get("action") == "run":
                resp = await console.call(request, "QueryService/RunQuery", q_pb.RunQueryRequest(
                    dataset=dataset, purpose=purpose, sql=sql, privacy_loss=loss, request_id=ctx["request_id"]))
                names, rows, charts = _rows(resp)
                ctx.update(result=resp, names=names, rows=rows, charts=charts, budget_after=_budget_view(resp.budget),
                           receipt=Receipt.from_proto(resp.receipt).to_client_json() if resp.receipt.signature else "")
                ctx["request_id"] = new_request_id()  # the next run is a new request
                after = await console.call(request, "BudgetService/GetPrivacyBudget", b_pb.GetPrivacyBudgetRequest())
                ctx["budgets"] = [_budget_view(b) for b in after.grants]
            else:
                ctx["explained"] = await console.call(request, "QueryService/ExplainQuery", q_pb.ExplainQueryRequest(
                    dataset=dataset, purpose=purpose, sql=sql, privacy_loss=loss))
        except GatewayError as exc:
            ctx["error"] = exc
    return console.page(request, "analyst_query.html", ctx, status=_status(ctx))


def _status(ctx: dict[str, Any]) -> int:
    error = ctx.get("error")
    return 200 if error is None else 400 if error.code.name == "INVALID_ARGUMENT" else 403 \
        if error.code.name == "PERMISSION_DENIED" else 429 if error.code.name == "RESOURCE_EXHAUSTED" else 200


async def history(console: Console, request: Request) -> Response:
    """The caller's own requests as the audit log records them, with receipts of released answers."""
    before = _int(request.query_params.get("before"))
    resp = await console.call(request, "AuditService/ListMyRequests",
                              au_pb.ListMyRequestsRequest(before_seq=before, page_size=50))
    return console.page(request, "analyst_history.html", {"title": "My requests", "entries": list(resp.entries),
                                                          "next": resp.next_before_seq})


async def receipt(console: Console, request: Request) -> Response:
    """One of the caller's receipts as the file `pgw receipt verify` and the auditor page take."""
    rid = request.path_params["request_id"]
    resp = await console.call(request, "AuditService/GetMyReceipt", au_pb.GetMyReceiptRequest(request_id=rid))
    body = Receipt.from_proto(resp.receipt).to_client_json()
    safe = "".join(ch for ch in rid if ch.isalnum() or ch in "-_")[:64] or "receipt"
    return Response(body, media_type="application/json",
                    headers={"content-disposition": f'attachment; filename="receipt-{safe}.json"'})


def _int(raw: str | None) -> int:
    try:
        return max(0, int(raw or 0))
    except ValueError:
        return 0


ROUTES = [
    ("/analyst/datasets", datasets, ["GET"]),
    ("/analyst/datasets/{name}", dataset, ["GET"]),
    ("/analyst/query", query, ["GET", "POST"]),
    ("/analyst/history", history, ["GET"]),
    ("/analyst/receipts/{request_id}", receipt, ["GET"]),
]
