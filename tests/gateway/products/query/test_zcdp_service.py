"""zCDP grants end to end through the generated stubs: real gateway, sandbox process, DuckDB and OpenDP.

Costs are in rho (the OpenDP maps of Gaussian-family measurements), budgets are exhausted in rho, a
retried request id is free, and every reported (epsilon, delta) is OpenDP's conversion of the total rho
at the grant's delta."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from privacy_gateway.v1 import budget_service_pb2 as b_pb
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import query_service_pb2 as q_pb

from gateway.cli.client import error_details
from gateway.rpc.server import Gateway
from sandbox.pricing import zcdp
from tests.helpers import Env, Stubs, channel_for, fresh, stubs_for

pytestmark = pytest.mark.integration

DELTA = 1e-6  # the test grants' delta


@pytest.fixture
def zanalyst(env: Env, gateway: Gateway) -> Iterator[Stubs]:
    """Stubs for the consumer with zCDP grants."""
    ch = channel_for(env, gateway.port, "zanalyst")
    yield stubs_for(ch)
    ch.close()


def run(stubs: Stubs, sql: str, rho: float, *, purpose: str = "zcdp-testing", request_id: str = "",
        delta: float = 0.0) -> q_pb.RunQueryResponse:
    return stubs.query.RunQuery(q_pb.RunQueryRequest(
        dataset="registry", sql=sql, purpose=purpose, request_id=request_id,
        privacy_loss=common_pb.PrivacyLoss(rho=rho, delta=delta)))


def fails(call, *args, **kwargs):  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return error_details(info.value)


def grant(stubs: Stubs, purpose: str) -> common_pb.BudgetStatus:
    grants = stubs.budget.GetPrivacyBudget(b_pb.GetPrivacyBudgetRequest()).grants
    return next(g for g in grants if g.purpose == purpose)


def test_count_costs_rho_and_reports_the_conversion(zanalyst: Stubs, env: Env) -> None:
    before = grant(zanalyst, "zcdp-testing")
    assert before.privacy_definition == "zcdp"
    assert before.budget.rho == 2.0 and before.budget.delta == DELTA
    assert before.budget.epsilon == pytest.approx(zcdp.rho_to_epsilon(2.0, DELTA), rel=1e-12)
    assert before.max_per_query.rho == 0.5
    sql = fresh("SELECT COUNT(*) AS n, SUM(income) AS s FROM residents")
    resp = run(zanalyst, sql, 0.1)
    n, s = resp.rows[0].cells
    assert n.noise.mechanism == "discrete_gaussian" and s.noise.mechanism in ("discrete_gaussian", "gaussian")
    assert n.confidence_interval.lower <= n.int64_value <= n.confidence_interval.upper
    # the cost is the sum of the releases' rho, each an OpenDP map, and within the request
    rhos = [r.privacy_loss.rho for r in resp.plan.releases]
    assert all(r.privacy_loss.epsilon == 0 for r in resp.plan.releases)
    assert resp.privacy_cost.rho == pytest.approx(math.fsum(rhos), rel=1e-15)
    assert resp.privacy_cost.rho <= 0.1 and resp.privacy_cost.rho == pytest.approx(0.1, rel=1e-9)
    # (epsilon, delta) of the query: OpenDP's conversion of its rho at the grant's delta
    assert resp.privacy_cost.delta == DELTA
    assert resp.privacy_cost.epsilon == zcdp.rho_to_epsilon(resp.privacy_cost.rho, DELTA)
    # the budget after: spent in rho, and its (epsilon, delta) from the TOTAL rho, not summed epsilons
    after = resp.budget
    spent = after.spent.rho - before.spent.rho
    assert spent == pytest.approx(resp.privacy_cost.rho, abs=2e-9)  # nano-rho units
    assert after.spent.epsilon == zcdp.rho_to_epsilon(after.spent.rho, DELTA)
    assert after.remaining.rho == pytest.approx(2.0 - after.spent.rho, abs=1e-9)
    second = run(zanalyst, fresh("SELECT COUNT(*) AS n FROM residents"), 0.1)
    total = second.budget.spent
    assert total.epsilon == zcdp.rho_to_epsilon(total.rho, DELTA)
    assert total.epsilon < after.spent.epsilon + second.privacy_cost.epsilon  # composition in rho is tighter
    # ExplainQuery shows the same cost in rho without charging
    explain = zanalyst.query.ExplainQuery(q_pb.ExplainQueryRequest(
        dataset="registry", sql=sql, purpose="zcdp-testing", privacy_loss=common_pb.PrivacyLoss(rho=0.1)))
    assert explain.privacy_cost.rho == resp.privacy_cost.rho and explain.affordable
    assert grant(zanalyst, "zcdp-testing").spent.rho == total.rho


def test_every_aggregate_kind_answers_on_zcdp(zanalyst: Stubs) -> None:
    sql = fresh("SELECT sex, AVG(income) AS a, STDDEV(income) AS sd, MEDIAN(birth_year) AS m "
                "FROM residents GROUP BY sex")
    resp = run(zanalyst, sql, 0.2)
    assert len(resp.rows) >= 2
    mechs = {r.mechanism for r in resp.plan.releases}
    assert "noisy_max_zcdp" in mechs and mechs <= {"discrete_gaussian", "gaussian", "noisy_max_zcdp"}
    for row in resp.rows:
        for cell in row.cells[1:]:
            assert cell.confidence_interval.lower <= cell.confidence_interval.upper
    assert resp.privacy_cost.rho <= 0.2


def test_partition_selection_is_gaussian_threshold(zanalyst: Stubs) -> None:
    # regions.name is public with no declared domain: its keys come from the data
    sql = ("SELECT g.name, COUNT(*) AS n FROM residents r JOIN regions g ON r.region = g.code "
           f"WHERE r.birth_year < {3000 + uuid.uuid4().int % 10**6} GROUP BY g.name")
    d = fails(run, zanalyst, sql, 0.1)
    assert d.reason == "DELTA_REQUIRED"
    d = fails(run, zanalyst, sql, 0.1, delta=DELTA)  # more than half of the grant's delta
    assert d.reason == "PRIVACY_LOSS_ABOVE_QUERY_CAP"
    resp = run(zanalyst, sql, 0.1, delta=1e-8)
    assert resp.plan.group_by_mode == "partition_selection" and resp.plan.threshold > 0
    # the COUNT itself is released by the Gaussian threshold (no separate selection)
    (select,) = resp.plan.releases
    assert (select.output, select.mechanism) == ("n", "gaussian_threshold")
    assert 0 < select.privacy_loss.delta <= 1e-8
    assert resp.privacy_cost.rho <= 0.1
    # the reported (epsilon, delta) accounts the selection's delta inside the grant's delta
    eps, delta = zcdp.to_approx_dp(resp.privacy_cost.rho, select.privacy_loss.delta, DELTA)
    assert (resp.privacy_cost.epsilon, resp.privacy_cost.delta) == (eps, delta)


def test_requests_must_state_rho(zanalyst: Stubs) -> None:
    sql = fresh("SELECT COUNT(*) FROM residents")
    d = fails(zanalyst.query.RunQuery, q_pb.RunQueryRequest(
        dataset="registry", sql=sql, purpose="zcdp-testing", privacy_loss=common_pb.PrivacyLoss(epsilon=0.5)))
    assert d.reason == "INVALID_PRIVACY_LOSS" and "rho" in d.message
    d = fails(zanalyst.query.RunQuery, q_pb.RunQueryRequest(
        dataset="registry", sql=sql, purpose="zcdp-testing",
        privacy_loss=common_pb.PrivacyLoss(epsilon=0.5, rho=0.1)))
    assert d.reason == "INVALID_PRIVACY_LOSS"
    for bad in (-0.1, math.nan, math.inf):
        assert fails(run, zanalyst, sql, bad).reason == "INVALID_PRIVACY_LOSS"
    assert fails(run, zanalyst, sql, 0.6).reason == "PRIVACY_LOSS_ABOVE_QUERY_CAP"


def test_rho_on_a_pure_grant_is_refused(analyst: Stubs) -> None:
    d = fails(run, analyst, fresh("SELECT COUNT(*) FROM residents"), 0.1, purpose="testing")
    assert d.reason == "INVALID_PRIVACY_LOSS" and "zcdp" in d.message


def test_accuracy_first_solves_the_gaussian_scale(zanalyst: Stubs) -> None:
    resp = zanalyst.query.RunQuery(q_pb.RunQueryRequest(
        dataset="registry", sql=fresh("SELECT COUNT(*) AS n FROM residents"), purpose="zcdp-testing",
        accuracy=q_pb.AccuracyTarget(half_width_95=30.0)))
    cell = resp.rows[0].cells[0]
    half = (cell.confidence_interval.upper - cell.confidence_interval.lower) / 2
    assert half <= 30.0 or cell.confidence_interval.lower == 0.0
    (release,) = resp.plan.releases
    assert release.half_width_95 <= 30.0 and release.half_width_95 >= 29.0
    assert 0 < resp.privacy_cost.rho <= 0.5


def test_exhaustion_and_replay(zanalyst: Stubs) -> None:
    """A grant of rho 0.03: 0.02 then 0.02 is refused (nothing charged); a retry by request id is
    the same release at no cost."""
    rid = str(uuid.uuid4())
    sql = fresh("SELECT COUNT(*) AS n FROM residents")
    first = run(zanalyst, sql, 0.02, purpose="zcdp-small", request_id=rid)
    assert first.privacy_cost.rho == pytest.approx(0.02, rel=1e-9)
    d = fails(run, zanalyst, fresh("SELECT COUNT(*) FROM residents"), 0.02, purpose="zcdp-small")
    assert d.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert d.reason == "PRIVACY_BUDGET_EXHAUSTED"
    assert "rho" in d.message and d.metadata["requestedRho"]
    assert float(d.metadata["remainingRho"]) == pytest.approx(0.01, abs=1e-9)
    again = run(zanalyst, sql, 0.02, purpose="zcdp-small", request_id=rid)
    assert again.replayed and again.rows == first.rows
    status = grant(zanalyst, "zcdp-small")
    assert status.spent.rho == pytest.approx(first.privacy_cost.rho, abs=1e-9)
    assert status.remaining.rho == pytest.approx(0.01, abs=1e-9)
    assert status.spent.epsilon == zcdp.rho_to_epsilon(status.spent.rho, DELTA)
    run(zanalyst, fresh("SELECT COUNT(*) FROM residents"), 0.01, purpose="zcdp-small")  # exactly fits


def test_concurrent_rho_queries_never_overspend(env: Env, gateway: Gateway) -> None:
    """32 concurrent queries of rho 0.01 against a budget of 0.08: exactly 8 are answered."""
    ch = channel_for(env, gateway.port, "zracer")
    s = stubs_for(ch)
    queries = [fresh("SELECT COUNT(*) FROM residents") for _ in range(32)]

    def one(i: int) -> grpc.StatusCode:
        try:
            run(s, queries[i], 0.01, purpose="zcdp-racing")
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return,attr-defined]

    with ThreadPoolExecutor(max_workers=32) as pool:
        codes = list(pool.map(one, range(32)))
    assert codes.count(grpc.StatusCode.OK) == 8
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 24
    status = grant(s, "zcdp-racing")
    assert status.spent.rho <= 0.08
    assert status.spent.rho == pytest.approx(0.08, abs=1e-8)
    ch.close()
