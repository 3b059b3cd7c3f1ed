"""Each role's main task in a real headless Chromium presenting its client certificate, against a real gateway.

With PGW_CONSOLE_SCREENSHOTS=<dir> set, each page visited is saved there as PNG (`docs/console/` holds the
committed ones: `PGW_CONSOLE_SCREENSHOTS=docs/console .venv/bin/python -m pytest tests/gateway/console`).
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import query_service_pb2 as q_pb
from privacy_gateway.v1 import query_service_pb2_grpc as q_grpc

from tests.gateway.console.browser import context_for, launched
from tests.gateway.console.conftest import ConsoleEnv

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SQL = "SELECT sex, COUNT(*) AS people, AVG(income) AS avg_income FROM residents GROUP BY sex"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with launched() as b:
        yield b


def _shot(page: Any, name: str) -> None:
    out = os.environ.get("PGW_CONSOLE_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(out) / f"{name}.png"), full_page=True)


def _page(browser: Any, e: ConsoleEnv, who: str | None) -> Any:
    return context_for(browser, e.tls, who, [e.url, e.public_url]).new_page()


def _query(e: ConsoleEnv, who: str, purpose: str, eps: float) -> None:
    with e.channel(who) as ch:
        q_grpc.QueryServiceStub(ch).RunQuery(q_pb.RunQueryRequest(
            dataset="registry", purpose=purpose, privacy_loss=common_pb.PrivacyLoss(epsilon=eps),
            sql=f"SELECT COUNT(*) FROM residents WHERE birth_year > {uuid.uuid4().int % 500 + 1000}",
            request_id=uuid.uuid4().hex), timeout=60)


def test_analyst_prices_runs_and_sees_the_interval(browser: Any, console_env: ConsoleEnv) -> None:
    """Datasets and their columns; price a query, then run it: each value with its 95% interval as an error
    bar, the budget left lower by the cost; the history lists it with a receipt that downloads."""
    e = console_env
    page = _page(browser, e, "analyst")
    page.goto(e.url + "/analyst/datasets")
    assert page.locator("#identity").inner_text() == "analyst"
    _shot(page, "analyst-datasets")
    page.click("text=registry")
    assert page.locator("#table-residents").is_visible()
    assert page.locator("td:has-text('quasi_identifier')").count() + page.locator("td:has-text('public')").count()
    _shot(page, "analyst-dataset")
    page.goto(e.url + "/analyst/query")
    page.fill("#sql", SQL)
    page.fill("#loss", "1.0")
    page.click("#explain")
    assert page.locator("#price").is_visible(), page.locator("main").inner_text()
    cost = float(page.locator("#cost").inner_text().split()[0])
    assert cost == pytest.approx(1.0)
    left = float(page.locator("#remaining-before").inner_text().replace(",", ""))
    _shot(page, "analyst-price")
    page.click("#run")
    assert page.locator("#answer").is_visible()
    assert page.locator("#intervals svg circle.point").count() == 4  # 2 groups x 2 noisy outputs
    assert page.locator("#intervals svg line.whisker").count() == 12
    assert "[" in page.locator("#answer-table tbody td").nth(1).inner_text()  # the interval beside the value
    assert float(page.locator("#remaining").inner_text().replace(",", "")) == pytest.approx(left - cost)
    rid = page.locator("#request-id").inner_text()
    _shot(page, "analyst-answer")
    page.goto(e.url + "/analyst/history")
    row = page.locator("#history tbody tr").filter(has_text="RunQuery").first
    assert "answered" in row.inner_text()
    _shot(page, "analyst-history")
    with page.expect_download() as info:
        page.click(f"a[href='/analyst/receipts/{rid}']")
    receipt = json.loads(Path(info.value.path()).read_text())
    assert json.loads(receipt["payload_json"])["request_id"] == rid
    page.context.close()


def test_operator_revokes_reinstates_and_reviews_the_alert(browser: Any, console_env: ConsoleEnv) -> None:
    """The intern spends over half its member budget (an alert fires); the operator revokes the intern with
    confirmation (the intern's next query is refused), reinstates it (admitted again), and acknowledges the
    alert; usage by use class exports as CSV."""
    e = console_env
    _query(e, "intern", "credit", 1.5)  # 75% of its 2.0 member budget: grant_near_exhaustion (threshold 0.5)
    page = _page(browser, e, "ops-admin")
    page.goto(e.url + "/operator/organizations")
    assert page.locator("#pending-alerts").is_visible()
    _shot(page, "operator-organizations")
    page.click("#member-intern >> text=Revoke")
    assert page.locator("#subject").inner_text() == "intern"
    page.fill("#reason-input", "left the team")
    _shot(page, "operator-confirm")
    page.click("#confirm")
    assert "revoked" in page.locator("#member-intern .status").inner_text()
    with pytest.raises(grpc.RpcError, match=r"REVOKED|revoked"):
        _query(e, "intern", "credit", 0.1)
    page.click("#member-intern >> text=Reinstate")
    page.click("#confirm")
    assert page.locator("#member-intern .status").inner_text() == "active"
    _query(e, "intern", "credit", 0.1)  # admitted again
    page.goto(e.url + "/operator/alerts")
    alert = page.locator("tr.alert-row").filter(has_text="intern/registry/credit").first
    assert "grant_near_exhaustion" in alert.inner_text()
    pending = int(page.locator("#pending").inner_text())
    _shot(page, "operator-alerts")
    alert.locator("input[name=note]").fill("expected: month-end run")
    alert.locator("button.ack").click()
    assert "by ops-admin" in page.locator("tr.alert-row").filter(has_text="intern/registry/credit").first.inner_text()
    assert int(page.locator("#pending").inner_text()) == pending - 1
    page.goto(e.url + "/operator/usage")
    assert "commercial" in page.locator("#by-class").inner_text()
    _shot(page, "operator-usage")
    with page.expect_download() as info:
        page.click("#csv")
    assert Path(info.value.path()).read_text().startswith("organization,member,purpose")
    page.context.close()


def _cap_spent(page: Any) -> float:
    return float(page.locator("#cap-registry .cap-spent").first.inner_text())


def test_data_owner_sees_cap_use_rise(browser: Any, console_env: ConsoleEnv) -> None:
    """The steward's page shows the registry cap's use; a query of 0.7 raises it by 0.7 (the sandbox's count)."""
    e = console_env
    page = _page(browser, e, "steward")
    page.goto(e.url + "/owner")
    before = _cap_spent(page)
    _query(e, "planner", "planning", 0.7)
    page.reload()
    assert _cap_spent(page) == pytest.approx(before + 0.7, abs=1e-6)
    assert page.locator("#cap-registry svg").count() >= 3  # cap bar, use over time, per organisation/purpose
    assert "City Institute" in page.content() or "city" in page.content()
    rules = page.locator("table.grade-rules tbody tr").all_inner_texts()  # the grade rules, the columns by grade
    assert len(rules) >= 4 and any(r.startswith("identifier") and "never usable" in r for r in rules), rules
    assert "identifier" in page.locator("#cap-registry table.grades").inner_text()
    _shot(page, "owner")
    page.context.close()


def test_auditor_verifies_the_chain_and_a_receipt(browser: Any, console_env: ConsoleEnv, tmp_path: Path) -> None:
    """The auditor pages through the log, verifies the chain and the accounts (both OK), and verifies an
    uploaded receipt (valid), then an altered one (not valid)."""
    e = console_env
    _query(e, "analyst", "credit", 0.2)
    with e.channel("analyst") as ch:
        resp = q_grpc.QueryServiceStub(ch).RunQuery(q_pb.RunQueryRequest(
            dataset="registry", purpose="credit", privacy_loss=common_pb.PrivacyLoss(epsilon=0.3),
            sql="SELECT COUNT(*) FROM residents WHERE birth_year > 1970", request_id=uuid.uuid4().hex), timeout=60)
    from gateway.release.receipts import Receipt

    good = tmp_path / "receipt.json"
    good.write_text(Receipt.from_proto(resp.receipt).to_client_json())
    bad = tmp_path / "altered.json"
    obj = json.loads(good.read_text())
    obj["payload_json"] = obj["payload_json"].replace('"epsilon":"0.3"', '"epsilon":"0.03"')
    bad.write_text(json.dumps(obj))
    assert e.gw.local is not None and e.gw.oversight is not None
    from privacy_gateway.v1 import budget_service_pb2 as b_pb

    while e.gw.oversight.audit.last_seq() < 60:  # more than one page of entries
        e.gw.local.call("BudgetService/GetPrivacyBudget", b_pb.GetPrivacyBudgetRequest(), "analyst")
    page = _page(browser, e, "auditor")
    page.goto(e.url + "/auditor/log")
    assert page.locator("#log tbody tr").count() == 50
    _shot(page, "auditor-log")
    page.click("#older")
    assert page.locator("#log tbody tr").count() >= 1
    page.goto(e.url + "/auditor/verify")
    page.click("#verify")
    assert "Chain intact" in page.locator("#chain").inner_text()
    assert "Accounts balance" in page.locator("#accounts").inner_text()
    _shot(page, "auditor-verify")
    page.goto(e.url + "/auditor/receipt")
    page.set_input_files("#receipt-file", str(good))
    page.click("#check")
    assert page.locator("#receipt-result").inner_text().startswith("Valid")
    _shot(page, "auditor-receipt")
    page.set_input_files("#receipt-file", str(bad))
    page.click("#check")
    assert "NOT valid" in page.locator("#receipt-result").inner_text()
    page.context.close()


def test_public_page_totals_match_the_ledger(browser: Any, console_env: ConsoleEnv) -> None:
    """Without a certificate: the public listener shows the published dataset's totals, equal to the ledger's
    settled charges on it; its JSON twin says the same; the console port refuses the handshake."""
    e = console_env
    _query(e, "planner", "planning", 0.4)
    rows = [r for r in e.gw.ledger.charges_between(None, None)
            if r["dataset"] == "registry" and r["status"] in ("released", "failed")]
    answered = sum(1 for r in rows if r["status"] == "released")
    epsilon = sum(float(r["epsilon"]) for r in rows)
    page = _page(browser, e, None)
    page.goto(e.public_url + "/")
    assert int(page.locator("#pub-registry .answered").inner_text()) == answered
    assert float(page.locator("#pub-registry .epsilon").inner_text()) == pytest.approx(epsilon, rel=1e-5)
    assert "analyst" not in page.content() and "intern" not in page.content()  # no consumer named
    _shot(page, "public-transparency")
    page.goto(e.public_url + "/transparency.json")
    report = json.loads(page.locator("body").inner_text())
    (ds,) = report["datasets"]
    assert sum(int(p["answered"]) for p in ds["periods"]) == answered
    assert sum(p["epsilon"] for p in ds["periods"]) == pytest.approx(epsilon, rel=1e-9)
    assert page.goto(e.public_url + "/analyst/datasets").status == 404  # nothing else is served there
    with pytest.raises(Exception, match=re.compile("ERR_|net::", re.I)):
        page.goto(e.url + "/transparency")  # the console wants a client certificate in the handshake
    page.context.close()


def test_consumer_cannot_reach_operator_pages(browser: Any, console_env: ConsoleEnv) -> None:
    """The operator pages' RPCs refuse a consumer: 403 with ROLE_REQUIRED, and the refusal is audited."""
    e = console_env
    assert e.gw.oversight is not None
    before = e.gw.oversight.audit.last_seq()
    page = _page(browser, e, "analyst")
    response = page.goto(e.url + "/operator/organizations")
    assert response.status == 403
    assert page.locator("#reason").inner_text() == "ROLE_REQUIRED"
    _shot(page, "refused-role")
    (entry,) = e.gw.oversight.audit.page(0, 1)
    assert entry.seq == before + 1 and entry.rpc.endswith("AdminService/ListOrganizations")
    assert (entry.consumer, entry.status_code, entry.reason) == ("analyst", "PERMISSION_DENIED", "ROLE_REQUIRED")
    page.context.close()
