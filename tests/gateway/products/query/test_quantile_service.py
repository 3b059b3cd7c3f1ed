"""Quantile intervals end to end through the gRPC stubs: narrower than the bounds, priced as two releases."""

from __future__ import annotations

import uuid

import grpc
import pytest
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import query_service_pb2 as q_pb

from gateway.cli import main as cli
from gateway.cli.client import error_details
from gateway.rpc.server import Gateway
from tests.helpers import Env, Stubs, channel_for, fresh, stubs_for

pytestmark = pytest.mark.integration

INCOME = (0.0, 2_000_000.0)
BIRTH_YEAR = (1930.0, 2007.0)


def _run(stubs: Stubs, sql: str, **kwargs: object) -> q_pb.RunQueryResponse:
    return stubs.query.RunQuery(q_pb.RunQueryRequest(
        dataset="registry", purpose="testing", sql=fresh(sql),
        privacy_loss=common_pb.PrivacyLoss(epsilon=1.0), **kwargs))  # type: ignore[arg-type]


def _explain(stubs: Stubs, sql: str, **kwargs: object) -> q_pb.ExplainQueryResponse:
    return stubs.query.ExplainQuery(q_pb.ExplainQueryRequest(
        dataset="registry", purpose="testing", sql=sql,
        privacy_loss=common_pb.PrivacyLoss(epsilon=1.0), **kwargs))  # type: ignore[arg-type]


def _number(cell: q_pb.Cell) -> float:
    return float(getattr(cell, cell.WhichOneof("value") or "double_value"))


def test_median_and_quantile_intervals_are_narrow_and_hold_the_estimate(analyst: Stubs) -> None:
    """On the generated registry (3,000 people) at epsilon 1: each interval lies inside the declared
    bounds, contains the released estimate, and is far narrower than the bounds (less than a quarter of
    them; wider needs an end >= 1/8 of the range from the quantile, hundreds of rows of rank beyond the
    ~25-row certification margin: a probability far below 1e-9). The plan lists two releases per
    quantile output (point and interval) and the charge is their sum."""
    resp = _run(analyst, "SELECT MEDIAN(income) AS m, QUANTILE_CONT(birth_year, 0.9) AS y FROM residents")
    row = resp.rows[0]
    for cell, (lo, hi) in zip(row.cells, [INCOME, BIRTH_YEAR], strict=True):
        ci = cell.confidence_interval
        assert ci.level == 0.95
        assert lo <= ci.lower <= _number(cell) <= ci.upper <= hi
        assert ci.upper - ci.lower < (hi - lo) / 4
        assert cell.noise.mechanism == "noisy_max/discrete_laplace"
    releases = [(r.output, r.component) for r in resp.plan.releases]
    assert releases == [("m", "quantile"), ("m", "interval"), ("y", "quantile"), ("y", "interval")]
    total = sum(r.privacy_loss.epsilon for r in resp.plan.releases)
    assert resp.privacy_cost.epsilon == pytest.approx(total, rel=1e-12) and total <= 1.0
    for r in resp.plan.releases:
        assert r.privacy_loss.epsilon == pytest.approx(0.25, rel=1e-9)  # 1/2 per output, split 1:1


def test_grouped_median_has_an_interval_per_group(analyst: Stubs) -> None:
    """A public-domain GROUP BY: every group's interval holds its estimate and is narrow (as above);
    one interval release covers all groups (one row of the plan)."""
    resp = _run(analyst, "SELECT sex, MEDIAN(income) AS m FROM residents GROUP BY sex")
    assert [r.cells[0].string_value for r in resp.rows] == ["F", "M"]
    for row in resp.rows:
        ci = row.cells[1].confidence_interval
        assert INCOME[0] <= ci.lower <= _number(row.cells[1]) <= ci.upper <= INCOME[1]
        assert ci.upper - ci.lower < (INCOME[1] - INCOME[0]) / 4
    assert [r.component for r in resp.plan.releases] == ["quantile", "interval"]


def test_min_and_max_intervals_hold_their_estimates(analyst: Stubs) -> None:
    """MIN and MAX are the extreme quantiles: their intervals hold the estimate and lie in the bounds
    (the far end is usually the bound itself: one person there cannot be ruled out)."""
    resp = _run(analyst, "SELECT MIN(birth_year) AS lo, MAX(birth_year) AS hi FROM residents")
    for cell in resp.rows[0].cells:
        ci = cell.confidence_interval
        assert BIRTH_YEAR[0] <= ci.lower <= _number(cell) <= ci.upper <= BIRTH_YEAR[1]


def test_interval_shares_split_and_opt_out(analyst: Stubs) -> None:
    """ExplainQuery shows the split; share 0 is one release with all the epsilon and the declared
    bounds as interval; a bad share or a non-quantile output is INVALID_INTERVAL_SHARE."""
    sql = "SELECT MEDIAN(income) AS m, COUNT(*) AS n FROM residents"
    ex = _explain(analyst, sql, interval_shares={"m": 0.2})
    eps = {(r.output, r.component): r.privacy_loss.epsilon for r in ex.plan.releases}
    assert eps[("m", "quantile")] == pytest.approx(0.4, rel=1e-9)
    assert eps[("m", "interval")] == pytest.approx(0.1, rel=1e-9)
    assert eps[("n", "count")] == pytest.approx(0.5, rel=1e-9)
    interval = next(r for r in ex.plan.releases if r.component == "interval")
    assert interval.half_width_95 > 0 and interval.sensitivity == 1
    out = _explain(analyst, sql, interval_shares={"m": 0.0})
    assert [(r.output, r.component) for r in out.plan.releases] == [("m", "quantile"), ("n", "count")]
    resp = _run(analyst, "SELECT MEDIAN(income) AS m FROM residents", interval_shares={"m": 0.0})
    ci = resp.rows[0].cells[0].confidence_interval
    assert (ci.lower, ci.upper) == INCOME and resp.rows[0].cells[0].noise.mechanism == "noisy_max"
    for shares in ({"m": 1.0}, {"m": -0.5}, {"n": 0.5}, {"nope": 0.5}):
        with pytest.raises(grpc.RpcError) as info:
            _explain(analyst, sql, interval_shares=shares)
        err = error_details(info.value)
        assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.reason == "INVALID_INTERVAL_SHARE"


def test_cli_explain_shows_the_split(env: Env, gateway: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    """`pgw explain --interval-share m=0.2` lists the point and interval releases of the median with
    their epsilons; a malformed option is refused before any call."""
    base = ["explain", "--target", f"127.0.0.1:{gateway.port}", "--tls-dir", str(env.tls_dir),
            "--as", "analyst", "--dataset", "registry", "--purpose", "testing", "--epsilon", "1"]
    assert cli.main([*base, "--interval-share", "m=0.2", "SELECT MEDIAN(income) AS m FROM residents"]) == 0
    out = capsys.readouterr().out
    lines = {tuple(line.split()[:2]): line.split() for line in out.splitlines() if line.startswith("m ")}
    assert float(lines[("m", "quantile")][5]) == pytest.approx(0.8, rel=1e-6)
    assert float(lines[("m", "interval")][5]) == pytest.approx(0.2, rel=1e-6)
    assert cli.main([*base, "--interval-share", "m", "SELECT MEDIAN(income) AS m FROM residents"]) == 2


def test_zcdp_median_interval(env: Env, gateway: Gateway) -> None:
    """On a zCDP grant the point is the Gumbel noisy max and the interval's ladder counts are discrete
    Gaussian, each charged its rho; the interval holds the estimate and is narrow (as above)."""
    ch = channel_for(env, gateway.port, "zanalyst")
    try:
        resp = stubs_for(ch).query.RunQuery(q_pb.RunQueryRequest(
            dataset="registry", purpose="zcdp-testing", sql=fresh("SELECT MEDIAN(income) AS m FROM residents"),
            privacy_loss=common_pb.PrivacyLoss(rho=0.2), interval_shares={"m": 0.5}))
    finally:
        ch.close()
    cell = resp.rows[0].cells[0]
    ci = cell.confidence_interval
    assert INCOME[0] <= ci.lower <= _number(cell) <= ci.upper <= INCOME[1]
    assert ci.upper - ci.lower < (INCOME[1] - INCOME[0]) / 4
    assert cell.noise.mechanism == "noisy_max_zcdp/discrete_gaussian"
    rho = {r.component: r.privacy_loss.rho for r in resp.plan.releases}
    assert rho["quantile"] == pytest.approx(0.1, rel=1e-9) and rho["interval"] == pytest.approx(0.1, rel=1e-9)
    assert resp.privacy_cost.rho == pytest.approx(sum(rho.values()), rel=1e-12)


def test_interval_shares_are_part_of_the_request_and_the_plan(analyst: Stubs) -> None:
    """A request id is bound to its interval shares (reusing it with others is REQUEST_ID_REUSED), and
    the charge-once cache does not answer a query with another split with the earlier release."""
    sql = fresh("SELECT MEDIAN(birth_year) AS m FROM residents")
    rid = str(uuid.uuid4())

    def run(share: float, request_id: str = "") -> q_pb.RunQueryResponse:
        return analyst.query.RunQuery(q_pb.RunQueryRequest(
            dataset="registry", purpose="testing", sql=sql, request_id=request_id,
            privacy_loss=common_pb.PrivacyLoss(epsilon=0.5), interval_shares={"m": share}))

    first = run(0.2, rid)
    assert run(0.2, rid).replayed
    with pytest.raises(grpc.RpcError) as info:
        run(0.3, rid)
    assert error_details(info.value).reason == "REQUEST_ID_REUSED"
    assert run(0.2).cached and not first.cached
    other = run(0.3)
    assert not other.cached and other.privacy_cost.epsilon > 0
