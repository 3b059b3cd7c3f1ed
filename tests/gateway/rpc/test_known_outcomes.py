"""Requests whose outcome is known before any data is touched get that outcome, never INTERNAL and never a
charged failure: accuracy targets no noise can meet or that need less than the minimum epsilon, plans over
the sandbox compiler's limits, aggregates of constants, extreme weights and interval shares. Each of these
once ended INTERNAL, or was charged and then failed in the sandbox. Real gateway, sandbox and OpenDP.
"""

from __future__ import annotations

import math

import grpc
import pytest
from privacy_gateway.v1 import budget_service_pb2 as b_pb
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import query_service_pb2 as q_pb
from privacy_gateway.v1 import query_service_pb2_grpc as q_grpc

from gateway.cli.client import ErrorDetails, error_details
from gateway.products.common import MIN_EPSILON
from gateway.rpc.server import Gateway
from tests.helpers import Env, Stubs, channel_for, fresh

pytestmark = pytest.mark.integration


def _spent(stubs: Stubs, purpose: str = "testing") -> float:
    resp = stubs.budget.GetPrivacyBudget(b_pb.GetPrivacyBudgetRequest(dataset="registry"))
    g = next(g for g in resp.grants if g.purpose == purpose)
    return g.spent.rho if g.privacy_definition == "zcdp" else g.spent.epsilon


def _refused(stubs: Stubs, request: q_pb.RunQueryRequest, *, explain: bool = True) -> ErrorDetails:
    """RunQuery (and ExplainQuery) refuse `request` alike, and nothing is charged."""
    before = _spent(stubs, request.purpose)
    with pytest.raises(grpc.RpcError) as info:
        stubs.query.RunQuery(request)
    d = error_details(info.value)
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT, d
    if explain:
        fields = {f.name: getattr(request, f.name) for f in q_pb.ExplainQueryRequest.DESCRIPTOR.fields
                  if f.name in ("dataset", "sql", "purpose")}
        ex = q_pb.ExplainQueryRequest(**fields)
        for name in ("privacy_loss", "accuracy"):
            if request.HasField(name):
                getattr(ex, name).CopyFrom(getattr(request, name))
        ex.weights.update(request.weights)
        ex.interval_shares.update(request.interval_shares)
        with pytest.raises(grpc.RpcError) as info2:
            stubs.query.ExplainQuery(ex)
        e = error_details(info2.value)
        assert (e.code, e.reason) == (d.code, d.reason)
    assert _spent(stubs, request.purpose) == before
    return d


def _query(sql: str, *, epsilon: float = 1.0, purpose: str = "testing", **kw: object) -> q_pb.RunQueryRequest:
    loss = common_pb.PrivacyLoss(epsilon=epsilon) if epsilon else None
    return q_pb.RunQueryRequest(dataset="registry", sql=sql, purpose=purpose, privacy_loss=loss, **kw)  # type: ignore[arg-type]


COUNT = "SELECT COUNT(*) AS n FROM residents"


@pytest.mark.parametrize("half_width", [5e-324, 1e-310])
def test_an_accuracy_target_no_noise_can_meet_is_invalid(analyst: Stubs, half_width: float) -> None:
    """A subnormal half-width gave a zero noise scale and a ZeroDivisionError (INTERNAL)."""
    d = _refused(analyst, _query(fresh(COUNT), epsilon=0, accuracy=q_pb.AccuracyTarget(half_width_95=half_width)))
    assert d.reason == "INVALID_ACCURACY_TARGET" and d.metadata["field"] == "accuracy"


def test_an_accuracy_target_below_the_minimum_epsilon_is_invalid(analyst: Stubs) -> None:
    """half_width 1e300 once gave epsilon ~3e-300: priced, charged, then a failure in the sandbox (ABORTED).
    A target that needs less than the minimum epsilon is refused before anything is charged."""
    d = _refused(analyst, _query(fresh(COUNT), epsilon=0, accuracy=q_pb.AccuracyTarget(half_width_95=1e17)))
    assert d.reason == "INVALID_ACCURACY_TARGET"
    assert 0 < float(d.metadata["requiredEpsilon"]) < MIN_EPSILON
    d = _refused(analyst, _query(fresh(COUNT), epsilon=0, accuracy=q_pb.AccuracyTarget(half_width_95=1e300)))
    assert (d.reason, d.metadata["field"]) == ("INVALID_ACCURACY_TARGET", "accuracy.half_width_95")


def test_per_output_targets_are_held_to_the_same_rules(analyst: Stubs) -> None:
    """Per-output targets: a subnormal one is refused, and so is a set whose total is below the minimum."""
    sql = fresh("SELECT COUNT(*) AS n, SUM(CLAMP(birth_year, 1930, 2007)) AS s FROM residents")
    d = _refused(analyst, _query(sql, epsilon=0, accuracy=q_pb.AccuracyTarget(per_output={"n": 5e-324, "s": 10.0})))
    assert d.reason == "INVALID_ACCURACY_TARGET"
    d = _refused(analyst, _query(sql, epsilon=0, accuracy=q_pb.AccuracyTarget(per_output={"n": 1e17, "s": 1e18})))
    assert d.reason == "INVALID_ACCURACY_TARGET"


def test_zcdp_accuracy_targets_are_held_to_the_minimum_rho(env: Env, gateway: Gateway) -> None:
    """The Gaussian family: a subnormal target and one needing less than the minimum rho are refused."""
    ch = channel_for(env, gateway.port, "zanalyst")
    from tests.helpers import stubs_for

    stubs = stubs_for(ch)
    for hw in (5e-324, 1e17):
        req = q_pb.RunQueryRequest(dataset="registry", sql=fresh(COUNT), purpose="zcdp-testing",
                                   accuracy=q_pb.AccuracyTarget(half_width_95=hw))
        d = _refused(stubs, req)
        assert d.reason == "INVALID_ACCURACY_TARGET", (hw, d)
    ch.close()


AND_CHAIN = "SELECT COUNT(*) FROM residents WHERE " + " AND ".join(["sex = 'F'"] * 1030)


def test_a_plan_over_the_sandbox_node_limit_is_refused_before_pricing(analyst: Stubs) -> None:
    """1,030 AND-ed comparisons passed the gateway and ExplainQuery, then the sandbox refused the plan
    (4,096 nodes) after the charge: INTERNAL. The gateway runs the sandbox's compiler first."""
    d = _refused(analyst, _query(AND_CHAIN))
    assert d.reason == "QUERY_TOO_COMPLEX" and "4096" in d.message


def test_a_plan_within_the_node_limit_is_explained_and_answered(analyst: Stubs) -> None:
    """1,000 comparisons: within the limits, so the same plan is priced, charged and answered."""
    sql = fresh("SELECT COUNT(*) AS n FROM residents").replace(
        " WHERE ", " WHERE " + " AND ".join(["sex = 'F'"] * 999) + " AND ")
    ex = analyst.query.ExplainQuery(q_pb.ExplainQueryRequest(
        dataset="registry", sql=sql, purpose="testing", privacy_loss=common_pb.PrivacyLoss(epsilon=1.0)))
    resp = analyst.query.RunQuery(_query(sql))
    assert resp.privacy_cost.epsilon > 0
    assert ex.privacy_cost.epsilon == pytest.approx(resp.privacy_cost.epsilon)
    assert len(resp.rows) == 1


@pytest.mark.parametrize("sql", [
    "SELECT MEDIAN(1) AS m FROM residents",
    "SELECT MAX(2) AS m FROM residents",
    "SELECT MIN(birth_year * 0) AS m FROM residents",
    "SELECT QUANTILE_CONT(3, 0.2) AS m FROM residents",
    "SELECT sex, MEDIAN(1) AS m FROM residents GROUP BY sex",
    "SELECT AVG(1) AS m FROM residents",
    "SELECT SUM(0) AS m FROM residents",
    "SELECT VAR(CLAMP(income, 7, 7)) AS m FROM residents",
])
def test_an_aggregate_of_a_constant_is_refused_before_pricing(analyst: Stubs, sql: str) -> None:
    """MEDIAN(1), MAX(2) and other constant-range quantiles were priced, charged and then always failed
    (the sandbox grouped by its one candidate, `GROUP BY 0`); AVG(1) and SUM(0) had no noise scale
    (INTERNAL). Their answers do not depend on the data: refused, nothing charged."""
    d = _refused(analyst, _query(sql))
    assert d.reason == "CONSTANT_AGGREGATE", d


def test_a_sum_of_a_non_zero_constant_is_a_count_and_answered(analyst: Stubs) -> None:
    resp = analyst.query.RunQuery(_query(fresh("SELECT SUM(1) AS n FROM residents")))
    assert resp.privacy_cost.epsilon > 0 and len(resp.rows) == 1


@pytest.mark.parametrize("key", ["'all'", "NULL", "TRUE", "2.5"])
def test_group_by_a_constant_is_refused(analyst: Stubs, key: str) -> None:
    d = _refused(analyst, _query(f"SELECT COUNT(*) AS n FROM residents GROUP BY {key}"))
    assert d.reason == "CONSTANT_GROUP_KEY", d


def test_extreme_but_allowed_weights_are_answered(analyst: Stubs) -> None:
    """The smallest epsilon split 1e6 : 1 gives a noise scale of about 2e18 for the sum: its standard
    deviation once divided by zero after the charge (ABORTED). Now it is answered."""
    sql = fresh("SELECT COUNT(*) AS n, SUM(income) AS s FROM residents")
    resp = analyst.query.RunQuery(_query(sql, epsilon=MIN_EPSILON, weights={"n": 1e6}))
    sums = [c for c in resp.rows[0].cells if c.noise.mechanism]
    assert all(math.isfinite(c.noise.stddev) and c.noise.stddev > 0 for c in sums)


def test_weights_and_shares_that_leave_no_noise_scale_are_invalid(analyst: Stubs) -> None:
    """A weight outside [1e-6, 1e6] is INVALID_WEIGHTS; an interval share so small that the interval's
    epsilon has no finite noise scale is INVALID_PRIVACY_LOSS (it was INTERNAL: 'could not be priced')."""
    sql = fresh("SELECT COUNT(*) AS n, MEDIAN(CLAMP(income, 0, 100000)) AS m FROM residents")
    d = _refused(analyst, _query(sql, weights={"n": 1e7}))
    assert (d.reason, d.metadata["field"]) == ("INVALID_WEIGHTS", "weights[n]")
    d = _refused(analyst, _query(sql, interval_shares={"m": 5e-324}))
    assert d.reason == "INVALID_PRIVACY_LOSS"


def test_a_refused_query_keeps_only_its_digest_in_the_audit_log(analyst: Stubs, gateway: Gateway) -> None:
    """A refusal's audit entry holds the query's SHA-256 and size, not its text."""
    assert gateway.oversight is not None
    _refused(analyst, _query("SELECT MEDIAN(1) AS marker_text FROM residents"), explain=False)
    last = [e for e in gateway.oversight.audit.entries() if e.rpc.endswith("/RunQuery")][-1]
    assert last.reason == "CONSTANT_AGGREGATE" and "marker_text" not in last.query
    assert last.query.startswith("sha256=") and "chars=" in last.query


def test_grpc_stub_sees_the_same_refusal_over_a_fresh_channel(env: Env, gateway: Gateway) -> None:
    """The refusals above do not depend on the channel's state: a new client sees them too."""
    ch = channel_for(env, gateway.port, "analyst")
    with pytest.raises(grpc.RpcError) as info:
        q_grpc.QueryServiceStub(ch).ExplainQuery(q_pb.ExplainQueryRequest(
            dataset="registry", sql=AND_CHAIN, purpose="testing", privacy_loss=common_pb.PrivacyLoss(epsilon=1.0)))
    ch.close()
    assert error_details(info.value).reason == "QUERY_TOO_COMPLEX"
