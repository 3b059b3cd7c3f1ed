"""Joins and partition selection end to end through the generated gRPC stubs."""

from __future__ import annotations

import grpc
import pytest
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import query_service_pb2 as q_pb

from gateway.cli.client import error_details
from gateway.rpc.server import Gateway
from tests.helpers import Env, Stubs

pytestmark = pytest.mark.integration


def _req(sql: str, eps: float, delta: float, purpose: str) -> q_pb.RunQueryRequest:
    return q_pb.RunQueryRequest(
        dataset="registry", sql=sql, purpose=purpose,
        privacy_loss=common_pb.PrivacyLoss(epsilon=eps, delta=delta),
    )


def test_join_through_grpc(analyst: Stubs, env: Env) -> None:
    sql = ("SELECT COUNT(*) AS n FROM residents r JOIN social_insurance s "
           "ON r.person_id = s.person_id")
    resp = analyst.query.RunQuery(_req(sql, 50.0, 0.0, "testing"))
    assert resp.plan.max_rows_per_unit == 12
    assert list(resp.plan.tables) == ["residents", "social_insurance"]
    (truth,) = env.exact(
        "SELECT COUNT(*) FROM residents r JOIN (SELECT * FROM social_insurance) s "
        "ON r.person_id = s.person_id"
    )[0]
    cell = resp.rows[0].cells[0]
    # eps 50, K = 12: scale 0.24; the generated data has at most 12 months per person
    assert abs(cell.int64_value - truth) <= 5
    assert resp.privacy_cost.delta == 0.0


def test_lookup_join_groups_by_macro_region(analyst: Stubs) -> None:
    sql = ("SELECT g.macro_region, COUNT(*) FROM residents r JOIN regions g ON r.region = g.code "
           "GROUP BY g.macro_region")
    resp = analyst.query.RunQuery(_req(sql, 1.0, 0.0, "testing"))
    assert len(resp.rows) == 6 and resp.plan.group_by_mode == "public_domain"


def test_partition_selection_through_grpc(analyst: Stubs) -> None:
    # regions.name is public with no declared domain: its keys come from the data
    sql = ("SELECT g.name, COUNT(*) AS n FROM residents r JOIN regions g ON r.region = g.code "
           "GROUP BY g.name")
    explain = analyst.query.ExplainQuery(q_pb.ExplainQueryRequest(
        dataset="registry", sql=sql, purpose="approx-testing",
        privacy_loss=common_pb.PrivacyLoss(epsilon=2.0, delta=1e-6)))
    assert explain.plan.group_by_mode == "partition_selection"
    assert explain.plan.threshold > 0
    assert 0 < explain.privacy_cost.delta <= 1e-6
    resp = analyst.query.RunQuery(_req(sql, 2.0, 1e-6, "approx-testing"))
    assert resp.plan.threshold == explain.plan.threshold
    assert resp.privacy_cost.delta == explain.privacy_cost.delta
    assert resp.budget.spent.delta >= resp.privacy_cost.delta
    names = [r.cells[0].string_value for r in resp.rows]
    assert len(names) == len(set(names)) and all(names)  # released keys, no duplicates


def test_partition_selection_needs_delta(analyst: Stubs) -> None:
    sql = ("SELECT g.name, COUNT(*) FROM residents r JOIN regions g ON r.region = g.code "
           "GROUP BY g.name")
    with pytest.raises(grpc.RpcError) as info:
        analyst.query.RunQuery(_req(sql, 1.0, 0.0, "testing"))
    assert error_details(info.value).reason == "DELTA_REQUIRED"
    with pytest.raises(grpc.RpcError) as info:
        analyst.query.RunQuery(_req(sql, 1.0, 0.0, "approx-testing"))
    assert error_details(info.value).reason == "DELTA_REQUIRED"


def test_the_count_selects_the_keys_at_the_whole_epsilon(analyst: Stubs) -> None:
    """A COUNT with private keys is released by OpenDP's Laplace threshold itself: no separate selection,
    the count's noise is the public-key count's at the same epsilon, and `weights={"group_keys": w}` asks
    only that selection gets at least w / (w + 1), which the whole epsilon already is."""
    sql = ("SELECT g.name, COUNT(*) AS n FROM residents r JOIN regions g ON r.region = g.code "
           "GROUP BY g.name")
    public = ("SELECT region, COUNT(*) AS n FROM residents GROUP BY region")

    def explain(q: str, weights: dict[str, float], purpose: str = "approx-testing") -> q_pb.ExplainQueryResponse:
        return analyst.query.ExplainQuery(q_pb.ExplainQueryRequest(
            dataset="registry", sql=q, purpose=purpose, weights=weights,
            privacy_loss=common_pb.PrivacyLoss(epsilon=1.0, delta=1e-6 if purpose == "approx-testing" else 0.0)))

    for weights in ({}, {"group_keys": 3.0}):
        (n,) = explain(sql, weights).plan.releases
        assert (n.output, n.mechanism) == ("n", "laplace_threshold")
        assert n.privacy_loss.epsilon == pytest.approx(1.0, rel=1e-9) and 0 < n.privacy_loss.delta <= 1e-6
        (pub,) = explain(public, {}, "testing").plan.releases
        assert n.scale == pub.scale and n.half_width_95 == pub.half_width_95


def test_group_keys_weight_moves_epsilon_to_partition_selection(analyst: Stubs) -> None:
    """`weights={"group_keys": w}`: a SUM has no count to select keys with, so a separate selection gets
    w / (w + 1) of epsilon (a lower threshold, more groups); an AVG's count is raised to that share."""
    sql = ("SELECT g.name, SUM(r.income) AS s FROM residents r JOIN regions g ON r.region = g.code "
           "GROUP BY g.name")

    def explain(q: str, weights: dict[str, float]) -> q_pb.ExplainQueryResponse:
        return analyst.query.ExplainQuery(q_pb.ExplainQueryRequest(
            dataset="registry", sql=q, purpose="approx-testing", weights=weights,
            privacy_loss=common_pb.PrivacyLoss(epsilon=1.0, delta=1e-6)))

    even, heavy = explain(sql, {}), explain(sql, {"group_keys": 3.0})
    eps = {r.output: r.privacy_loss.epsilon for r in heavy.plan.releases}
    assert eps["group_keys"] == pytest.approx(0.75, rel=1e-9) and eps["s"] == pytest.approx(0.25, rel=1e-9)
    assert {r.output: r.privacy_loss.epsilon for r in even.plan.releases}["group_keys"] == pytest.approx(0.5)
    assert heavy.plan.threshold < even.plan.threshold
    assert heavy.privacy_cost.epsilon <= 1.0
    resp = analyst.query.RunQuery(q_pb.RunQueryRequest(
        dataset="registry", sql=sql, purpose="approx-testing", weights={"group_keys": 3.0},
        privacy_loss=common_pb.PrivacyLoss(epsilon=1.0, delta=1e-6)))
    assert resp.plan.threshold == heavy.plan.threshold
    avg = sql.replace("SUM(r.income) AS s", "AVG(r.income) AS a")
    releases = explain(avg, {"group_keys": 3.0}).plan.releases
    parts = {(r.component, r.mechanism): r.privacy_loss.epsilon for r in releases}
    assert parts[("count", "laplace_threshold")] == pytest.approx(0.75, rel=1e-9)
    assert parts[("sum", "discrete_laplace")] == pytest.approx(0.25, rel=1e-9)
    # without private keys there is no selection to weight
    with pytest.raises(grpc.RpcError) as info:
        analyst.query.ExplainQuery(q_pb.ExplainQueryRequest(
            dataset="registry", sql="SELECT COUNT(*) AS n FROM residents", purpose="testing",
            weights={"group_keys": 2.0}, privacy_loss=common_pb.PrivacyLoss(epsilon=1.0)))
    assert error_details(info.value).reason == "INVALID_WEIGHTS"
    assert "private group keys" in info.value.details()


def test_cli_weight_option(env: Env, gateway: Gateway, capsys: pytest.CaptureFixture[str]) -> None:
    """`pgw explain --weight group_keys=3` moves epsilon to key selection; a malformed option is refused
    before any call (exit 2)."""
    from gateway.cli import main as cli

    sql = "SELECT g.name, SUM(r.income) AS n FROM residents r JOIN regions g ON r.region = g.code GROUP BY g.name"
    base = ["explain", "--target", f"127.0.0.1:{gateway.port}", "--tls-dir", str(env.tls_dir), "--as", "analyst",
            "--dataset", "registry", "--purpose", "approx-testing", "--epsilon", "1", "--delta", "1e-6"]
    assert cli.main([*base, "--weight", "group_keys=3", sql]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("group_keys ", "n "))}
    assert float(rows["group_keys"][5]) == pytest.approx(0.75, rel=1e-6)
    assert float(rows["n"][5]) == pytest.approx(0.25, rel=1e-6)
    assert cli.main([*base, "--weight", "group_keys", sql]) == 2
