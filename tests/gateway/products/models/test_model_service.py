"""ModelService end to end: real gateway + sandbox process + generated stubs over mTLS."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace

import grpc
import numpy as np
import pytest
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import model_service_pb2 as m_pb
from privacy_gateway.v1 import model_service_pb2_grpc as m_grpc
from privacy_gateway.v1 import query_service_pb2 as q_pb
from privacy_gateway.v1 import query_service_pb2_grpc as q_grpc

from gateway.cli.client import error_details
from gateway.rpc.server import Gateway, start_gateway
from tests.helpers import TEST_POLICY, Env, channel_for

pytestmark = pytest.mark.integration

MODEL_POLICY = TEST_POLICY + """
[[model_grants]]
consumer = "analyst"
dataset = "registry"
purpose = "testing"
table = "residents"
features = ["birth_year", "employed", "sex", "region", "income"]
labels = ["income", "employed"]
max_epsilon_per_request = 100.0

[[model_grants]]
consumer = "analyst"
dataset = "registry"
purpose = "approx-testing"
table = "residents"
features = ["birth_year", "employed", "sex", "region", "income"]
labels = ["income", "employed"]
max_epsilon_per_request = 100.0

[[model_grants]]
consumer = "planner"
dataset = "registry"
purpose = "planning"
table = "residents"
features = ["birth_year", "employed"]
labels = ["income"]
epsilon = 1.0
delta = 0.0
max_epsilon_per_request = 0.6
"""


@pytest.fixture(scope="module")
def model_gateway(env: Env) -> Iterator[Gateway]:
    """A gateway with model grants (its own state directory and sandbox)."""
    policy = env.root / "operator-models.toml"
    policy.write_text(MODEL_POLICY)
    state = env.root / "state-models"
    gw = start_gateway(replace(env.settings, policy=policy, state_dir=state,
                               sandbox_socket=state / "sandbox.sock"))
    yield gw
    gw.stop()


def _stub(env: Env, gw: Gateway, name: str) -> m_grpc.ModelServiceStub:
    return m_grpc.ModelServiceStub(channel_for(env, gw.port, name))


def _linear(**kw: object) -> m_pb.TrainModelRequest:
    args: dict[str, object] = dict(
        dataset="registry", purpose="testing", table="residents", features=["birth_year", "employed"],
        label="income", kind=m_pb.MODEL_KIND_LINEAR,
        privacy_loss=common_pb.PrivacyLoss(epsilon=50.0), request_id=uuid.uuid4().hex)
    args.update(kw)
    return m_pb.TrainModelRequest(**args)  # type: ignore[arg-type]


def test_train_linear_end_to_end(env: Env, model_gateway: Gateway) -> None:
    """Coefficients per term, DP metrics with intervals, the OpenDP cost, the charge and the budget."""
    stub = _stub(env, model_gateway, "analyst")
    resp = stub.TrainModel(_linear())
    assert [c.name for c in resp.coefficients] == ["birth_year", "employed"]
    assert {m.name for m in resp.metrics} == {"n", "rmse", "r2"}
    n = next(m for m in resp.metrics if m.name == "n")
    assert n.has_interval and abs(n.value - 3000) < 50
    assert len(resp.releases) == 1 and resp.releases[0].mechanism == "discrete_laplace"
    assert resp.privacy_cost.epsilon == pytest.approx(50.0) and resp.privacy_cost.epsilon <= 50.0
    assert resp.privacy_cost.delta == 0.0
    assert resp.budget.spent.epsilon >= resp.privacy_cost.epsilon
    # employed residents earn more: the DP coefficient at epsilon 50 on 3000 people has the right sign
    assert resp.coefficients[1].value > 0


def test_retry_replays_and_is_charged_once(env: Env, model_gateway: Gateway) -> None:
    stub = _stub(env, model_gateway, "analyst")
    req = _linear()
    first = stub.TrainModel(req)
    again = stub.TrainModel(req)
    assert again.replayed and not first.replayed
    assert [c.value for c in again.coefficients] == [c.value for c in first.coefficients]
    assert again.budget.spent.epsilon == first.budget.spent.epsilon


def test_train_logistic_end_to_end(env: Env, model_gateway: Gateway) -> None:
    """zCDP composition of 2T + 1 releases (count, T gradients, T Hessians) converted to (epsilon, delta):
    the charge is the composition's map."""
    stub = _stub(env, model_gateway, "analyst")
    resp = stub.TrainModel(_linear(
        kind=m_pb.MODEL_KIND_LOGISTIC, label="employed", features=["birth_year", "income", "sex"],
        privacy_loss=common_pb.PrivacyLoss(epsilon=20.0, delta=1e-6), iterations=10, purpose="approx-testing"))
    comp = next(r for r in resp.releases if r.component == "composition")
    assert comp.count == 21 and comp.privacy_loss.delta == 1e-6
    assert [(r.component, r.count) for r in resp.releases if r.component != "composition"] == [
        ("count", 1), ("gradient", 10), ("hessian", 10)]
    assert resp.privacy_cost.epsilon == comp.privacy_loss.epsilon <= 20.0
    assert [c.name for c in resp.coefficients] == ["birth_year", "income", "sex=M"]


def _error(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()  # type: ignore[operator]
    d = error_details(info.value)
    return d.code, d.reason


def test_refusals(env: Env, model_gateway: Gateway) -> None:
    stub = _stub(env, model_gateway, "analyst")
    assert _error(lambda: stub.TrainModel(_linear(features=["name"]))) == (
        grpc.StatusCode.INVALID_ARGUMENT, "IDENTIFIER_COLUMN")
    assert _error(lambda: stub.TrainModel(_linear(kind=m_pb.MODEL_KIND_LOGISTIC, label="employed", features=["sex"],
                                                   privacy_loss=common_pb.PrivacyLoss(epsilon=1.0)))) == (
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PRIVACY_LOSS")
    assert _error(lambda: stub.TrainModel(_linear(purpose="nope"))) == (
        grpc.StatusCode.PERMISSION_DENIED, "DATASET_ACCESS_DENIED")
    planner = _stub(env, model_gateway, "planner")
    assert _error(lambda: planner.TrainModel(_linear(purpose="planning", features=["sex"],
                                                     privacy_loss=common_pb.PrivacyLoss(epsilon=0.1)))) == (
        grpc.StatusCode.INVALID_ARGUMENT, "FEATURE_NOT_ALLOWED")


def test_models_and_queries_share_the_grant(env: Env, model_gateway: Gateway) -> None:
    """Models spend the organisation's grant for the dataset and purpose, like queries: planner's grant is
    1.0 per period (0.5 per request). A model at 0.5 and a query at 0.5 use it up; the next model is
    RESOURCE_EXHAUSTED and charges nothing; every level is charged once per answer."""
    from gateway.budgets.ledger import GrantKey

    stub = _stub(env, model_gateway, "planner")
    ok = stub.TrainModel(_linear(purpose="planning", privacy_loss=common_pb.PrivacyLoss(epsilon=0.5)))
    assert ok.privacy_cost.epsilon == 0.5 and ok.budget.spent.epsilon == 0.5
    assert ok.budget.organization and ok.receipt.signature
    q = q_grpc.QueryServiceStub(channel_for(env, model_gateway.port, "planner"))
    q.RunQuery(q_pb.RunQueryRequest(dataset="registry", purpose="planning", sql="SELECT COUNT(*) FROM residents",
                                    privacy_loss=common_pb.PrivacyLoss(epsilon=0.5)))
    code, reason = _error(lambda: stub.TrainModel(
        _linear(purpose="planning", privacy_loss=common_pb.PrivacyLoss(epsilon=0.5))))
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "PRIVACY_BUDGET_EXHAUSTED")
    assert model_gateway.ledger.spent(GrantKey("planner", "registry", "planning")).epsilon == 1.0


def _evaluate(**kw: object) -> m_pb.EvaluateModelRequest:
    args: dict[str, object] = dict(
        dataset="registry", purpose="testing", table="residents", kind=m_pb.MODEL_KIND_LOGISTIC,
        coefficients=[m_pb.Coefficient(term="birth_year", value=0.05),
                      m_pb.Coefficient(term="income", value=1e-5)],
        intercept=-99.0, label="employed", thresholds=[0.3, 0.5],
        privacy_loss=common_pb.PrivacyLoss(epsilon=1.0), request_id=uuid.uuid4().hex)
    args.update(kw)
    return m_pb.EvaluateModelRequest(**args)  # type: ignore[arg-type]


def test_evaluate_logistic_and_dp_outputs_vary(env: Env, model_gateway: Gateway) -> None:
    """AUC and confusion matrices from a noisy histogram; two evaluations differ (noise, no exact values)."""
    stub = _stub(env, model_gateway, "analyst")
    a = stub.EvaluateModel(_evaluate())
    b = stub.EvaluateModel(_evaluate())
    assert len(a.confusion) == 2 and a.releases[0].component == "score_histogram"
    auc = next(m for m in a.metrics if m.name == "auc")
    assert 0.5 < auc.value <= 1.0 and auc.has_interval
    cells = lambda r: [x.value for m in r.confusion for x in (m.tp, m.fp, m.tn, m.fn)]  # noqa: E731
    assert cells(a) != cells(b)
    exact_n = env.exact("SELECT count(*) FROM residents WHERE employed IS NOT NULL")[0][0]
    n_a = next(m for m in a.metrics if m.name == "n").value
    n_b = next(m for m in b.metrics if m.name == "n").value
    assert n_a != n_b or n_a != exact_n


def test_evaluate_linear(env: Env, model_gateway: Gateway) -> None:
    stub = _stub(env, model_gateway, "analyst")
    r = stub.EvaluateModel(_evaluate(kind=m_pb.MODEL_KIND_LINEAR, label="income", thresholds=[],
                                     coefficients=[m_pb.Coefficient(term="employed", value=40000.0)],
                                     intercept=20000.0, residual_bound=500000.0,
                                     privacy_loss=common_pb.PrivacyLoss(epsilon=40.0)))
    assert [m.name for m in r.metrics] == ["n", "rmse", "r2"]
    assert [c.component for c in r.releases] == ["count", "sum_sq_residual", "sum_label", "sum_sq_label"]
    assert r.privacy_cost.epsilon <= 40.0


def test_evaluate_refuses_non_granted_and_identifier_columns(env: Env, model_gateway: Gateway) -> None:
    planner = _stub(env, model_gateway, "planner")
    req = _evaluate(purpose="planning", kind=m_pb.MODEL_KIND_LINEAR, label="income", thresholds=[],
                    coefficients=[m_pb.Coefficient(term="region=120000", value=1.0)],
                    privacy_loss=common_pb.PrivacyLoss(epsilon=0.1))
    assert _error(lambda: planner.EvaluateModel(req)) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                        "FEATURE_NOT_ALLOWED")
    stub = _stub(env, model_gateway, "analyst")
    req = _evaluate(coefficients=[m_pb.Coefficient(term="person_id", value=1.0)])
    assert _error(lambda: stub.EvaluateModel(req)) == (grpc.StatusCode.INVALID_ARGUMENT, "IDENTIFIER_COLUMN")
    req = _evaluate(coefficients=[m_pb.Coefficient(term="sex=X", value=1.0)])
    assert _error(lambda: stub.EvaluateModel(req)) == (grpc.StatusCode.INVALID_ARGUMENT, "UNKNOWN_TERM")


def test_linear_coefficients_close_at_high_epsilon(env: Env, model_gateway: Gateway) -> None:
    """At a large epsilon the DP fit approaches the exact least squares on the bounded data."""
    stub = _stub(env, model_gateway, "analyst")
    resp = stub.TrainModel(_linear(privacy_loss=common_pb.PrivacyLoss(epsilon=100.0)))
    rows = env.exact("SELECT birth_year, CAST(employed AS DOUBLE), LEAST(income, 2000000) FROM residents")
    x = np.array([[1.0, r[0], r[1]] for r in rows])
    y = np.array([float(r[2]) for r in rows])
    beta = np.linalg.lstsq(x, y, rcond=None)[0]
    dp_beta = np.array([resp.intercept.value, *(c.value for c in resp.coefficients)])
    assert abs(dp_beta[2] - beta[2]) < 0.5 * abs(beta[2])


def test_a_model_grant_limit_caps_model_spending_inside_the_grant(env: Env) -> None:
    """`epsilon` on a model grant is the most models may spend of the organisation's grant per period: analyst's
    models may spend 1.0 of its 1000; a model at 0.8 fits, a second at 0.8 is RESOURCE_EXHAUSTED (level
    member_product) and charges nothing; queries still spend the grant."""
    from gateway.budgets.ledger import GrantKey

    policy = env.root / "operator-model-limit.toml"
    policy.write_text(TEST_POLICY + """
[[model_grants]]
consumer = "analyst"
dataset = "registry"
purpose = "testing"
table = "residents"
features = ["birth_year", "employed"]
labels = ["income"]
max_epsilon_per_request = 1.0
epsilon = 1.0
""")
    state = env.root / "state-model-limit"
    gw = start_gateway(replace(env.settings, policy=policy, state_dir=state, sandbox_socket=state / "sandbox.sock"))
    try:
        stub = _stub(env, gw, "analyst")
        stub.TrainModel(_linear(privacy_loss=common_pb.PrivacyLoss(epsilon=0.8)))
        key = GrantKey("analyst", "registry", "testing")
        spent = gw.ledger.spent(key).epsilon
        with pytest.raises(grpc.RpcError) as info:
            stub.TrainModel(_linear(privacy_loss=common_pb.PrivacyLoss(epsilon=0.8)))
        d = error_details(info.value)
        assert (d.code, d.reason, d.metadata["level"]) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED, "PRIVACY_BUDGET_EXHAUSTED", "member_product")
        assert gw.ledger.spent(key).epsilon == spent == pytest.approx(0.8)
        q = q_grpc.QueryServiceStub(channel_for(env, gw.port, "analyst"))
        q.RunQuery(q_pb.RunQueryRequest(dataset="registry", purpose="testing", sql="SELECT COUNT(*) FROM residents",
                                        privacy_loss=common_pb.PrivacyLoss(epsilon=5.0)))
        assert gw.ledger.spent(key).epsilon == pytest.approx(5.8)
    finally:
        gw.stop()
