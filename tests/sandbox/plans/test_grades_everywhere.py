"""The data owner's grades hold at every depth of a plan, and for models, in the gateway and in the sandbox.

Differential: for each construct (IN / NOT IN / EXISTS semi-joins, per-unit subqueries and CTEs, unit joins,
public lookup joins, HAVING and ORDER BY) a query that reads a column in a way its grade forbids is refused
exactly like the top-level form of the same misuse: the same gRPC status, reason, message and metadata
through the real gateway, and the same `ErrorReply` from a sandbox `Engine` handed the plan directly (no
gateway in between). Controls: the same constructs reading the same columns in allowed ways are answered,
so the refusals come from the grades and not from the constructs.

The catalog is `tests/fixtures/graded_catalog.toml` over the generated registry: `internal` allows only
filter, `sensitive` only aggregate_input; residents.region is internal, residents.income sensitive,
social_insurance.contribution internal, social_insurance.region sensitive.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import model_service_pb2 as m_pb
from privacy_gateway.v1 import model_service_pb2_grpc as m_grpc
from privacy_gateway.v1 import query_service_pb2 as q_pb

from gateway.cli.client import ErrorDetails, error_details
from gateway.products.query.sql.analyze import analyze
from gateway.rpc.server import Gateway, start_gateway
from sandbox.catalog import load_catalog
from sandbox.engine.engine import Engine
from sandbox.products import models
from sandbox.protocol.messages import ErrorReply, ExecuteRequest, ExecuteResult
from sandbox.protocol.models import EvaluateRequest, TrainRequest, TrainResult
from tests.helpers import TEST_POLICY, VERIFICATION_POLICY, Env, Stubs, channel_for, stubs_for

pytestmark = pytest.mark.integration

GRADED_CATALOG = Path(__file__).parents[2] / "fixtures" / "graded_catalog.toml"

POLICY = TEST_POLICY.replace(VERIFICATION_POLICY, "") + """
[[model_grants]]
consumer = "analyst"
dataset = "registry"
purpose = "testing"
table = "residents"
features = ["birth_year", "sex", "region", "employed"]
labels = ["income", "birth_year"]
epsilon = 1000.0
delta = 1e-3
max_epsilon_per_request = 100.0

[[model_grants]]
consumer = "analyst"
dataset = "registry"
purpose = "approx-testing"
table = "social_insurance"
features = ["month", "region"]
labels = ["contribution"]
epsilon = 1000.0
delta = 1e-3
max_epsilon_per_request = 100.0
"""

INCOME_FILTER = "SELECT COUNT(*) FROM residents WHERE income > 300"
CONTRIBUTION_SUM = "SELECT SUM(contribution) FROM social_insurance"

# (construct, query reading a column in a way its grade forbids, its top-level form, (column, use))
MISUSES = [
    ("IN subquery",
     "SELECT COUNT(*) FROM social_insurance WHERE person_id IN "
     "(SELECT person_id FROM residents WHERE income > 300)",
     INCOME_FILTER, ("residents.income", "filter")),
    ("NOT IN subquery",
     "SELECT COUNT(*) FROM social_insurance WHERE person_id NOT IN "
     "(SELECT person_id FROM residents WHERE income > 300)",
     INCOME_FILTER, ("residents.income", "filter")),
    ("EXISTS",
     "SELECT COUNT(*) FROM social_insurance s WHERE EXISTS "
     "(SELECT 1 FROM residents r WHERE r.person_id = s.person_id AND r.income > 300)",
     INCOME_FILTER, ("residents.income", "filter")),
    ("per-unit subquery WHERE",
     "SELECT COUNT(*) FROM (SELECT person_id, COUNT(*) AS n FROM residents WHERE income > 300 "
     "GROUP BY person_id) t",
     INCOME_FILTER, ("residents.income", "filter")),
    ("per-unit subquery aggregate",
     "SELECT AVG(t.total) FROM (SELECT person_id, SUM(contribution) AS total FROM social_insurance "
     "GROUP BY person_id) t",
     CONTRIBUTION_SUM, ("social_insurance.contribution", "aggregate_input")),
    ("filter on a per-unit output",
     "SELECT COUNT(*) FROM (SELECT person_id, MAX(income) AS top FROM residents GROUP BY person_id) t "
     "WHERE t.top > 300",
     INCOME_FILTER, ("residents.income", "filter")),
    ("group key on a per-unit output",
     "SELECT t.n, COUNT(*) FROM (SELECT person_id, COUNT(region) AS n FROM social_insurance "
     "GROUP BY person_id) t GROUP BY t.n",
     "SELECT region, COUNT(*) FROM social_insurance GROUP BY region",
     ("social_insurance.region", "group_key")),
    ("CTE",
     "WITH t AS (SELECT person_id, SUM(contribution) AS total FROM social_insurance GROUP BY person_id) "
     "SELECT AVG(total) FROM t",
     CONTRIBUTION_SUM, ("social_insurance.contribution", "aggregate_input")),
    ("unit join WHERE",
     "SELECT COUNT(*) FROM residents r JOIN social_insurance s ON r.person_id = s.person_id "
     "WHERE r.income > 300",
     INCOME_FILTER, ("residents.income", "filter")),
    ("unit join aggregate",
     "SELECT SUM(s.contribution) FROM residents r JOIN social_insurance s ON r.person_id = s.person_id",
     CONTRIBUTION_SUM, ("social_insurance.contribution", "aggregate_input")),
    ("public lookup join key",
     "SELECT COUNT(*) FROM social_insurance s JOIN regions g ON s.region = g.code",
     "SELECT COUNT(*) FROM social_insurance WHERE region = '110000'",
     ("social_insurance.region", "filter")),
    ("group key through a lookup",
     "SELECT g.macro_region, COUNT(*) FROM residents r JOIN regions g ON r.region = g.code "
     "GROUP BY g.macro_region",
     "SELECT region, COUNT(*) FROM residents GROUP BY region", ("residents.region", "group_key")),
    ("HAVING",
     "SELECT month, COUNT(*) FROM social_insurance GROUP BY month HAVING SUM(contribution) > 0",
     "SELECT month, SUM(contribution) FROM social_insurance GROUP BY month",
     ("social_insurance.contribution", "aggregate_input")),
    ("ORDER BY",
     "SELECT month, COUNT(*) FROM social_insurance GROUP BY month ORDER BY SUM(contribution)",
     "SELECT month, SUM(contribution) FROM social_insurance GROUP BY month",
     ("social_insurance.contribution", "aggregate_input")),
]

# The same constructs over the same tables, reading columns only in ways their grades allow.
ALLOWED = [
    "SELECT COUNT(*) FROM social_insurance WHERE person_id IN "
    "(SELECT person_id FROM residents WHERE birth_year > 1980)",
    "SELECT COUNT(*) FROM social_insurance s WHERE EXISTS "
    "(SELECT 1 FROM residents r WHERE r.person_id = s.person_id AND r.region = '110000')",
    "SELECT AVG(t.s) FROM (SELECT person_id, SUM(income) AS s FROM residents GROUP BY person_id) t",
    "WITH t AS (SELECT person_id, MAX(income) AS top FROM residents WHERE region = '110000' "
    "GROUP BY person_id) SELECT AVG(top) FROM t",
    "SELECT COUNT(*) FROM residents r JOIN social_insurance s ON r.person_id = s.person_id "
    "WHERE s.contribution > 100",
    "SELECT r.sex, COUNT(*) FROM residents r JOIN regions g ON r.region = g.code "
    "WHERE g.macro_region = 'North' GROUP BY r.sex",
    "SELECT month, COUNT(*) FROM social_insurance GROUP BY month HAVING COUNT(*) > 0 ORDER BY COUNT(*)",
]


@pytest.fixture(scope="module")
def graded_gateway(env: Env) -> Iterator[Gateway]:
    """A gateway (and its sandbox process) on the graded test catalog, with model grants."""
    policy = env.root / "operator-graded.toml"
    policy.write_text(POLICY)
    state = env.root / "state-graded"
    gw = start_gateway(replace(env.settings, catalog=GRADED_CATALOG, policy=policy, state_dir=state,
                               sandbox_socket=state / "sandbox.sock"))
    yield gw
    gw.stop()


@pytest.fixture(scope="module")
def graded_engine(env: Env) -> Engine:
    """A sandbox engine on the same catalog and data, driven directly (no gateway in between)."""
    return Engine(load_catalog(GRADED_CATALOG, env.data_dir))


@pytest.fixture
def stubs(env: Env, graded_gateway: Gateway) -> Iterator[Stubs]:
    ch = channel_for(env, graded_gateway.port, "analyst")
    yield stubs_for(ch)
    ch.close()


def _run(stubs: Stubs, sql: str) -> q_pb.RunQueryResponse:
    return stubs.query.RunQuery(q_pb.RunQueryRequest(
        dataset="registry", sql=sql, purpose="testing", privacy_loss=common_pb.PrivacyLoss(epsilon=1.0)))


def _refusal(stubs: Stubs, sql: str) -> ErrorDetails:
    with pytest.raises(grpc.RpcError) as info:
        _run(stubs, sql)
    return error_details(info.value)


_IDS = itertools.count()


def _execute(engine: Engine, sql: str) -> ExecuteResult | ErrorReply:
    info = engine.describe().dataset("registry")
    assert info is not None
    return engine.execute(ExecuteRequest(f"grades-{next(_IDS)}", analyze(sql, info), epsilon=1.0))


@pytest.mark.parametrize(("construct", "nested", "top", "misuse"), MISUSES, ids=[m[0] for m in MISUSES])
def test_gateway_refuses_a_nested_misuse_like_its_top_level_form(
    stubs: Stubs, construct: str, nested: str, top: str, misuse: tuple[str, str]
) -> None:
    """Same status, reason, message and metadata (naming the column and the use) nested and at the top."""
    top_err = _refusal(stubs, top)
    column, use = misuse
    assert top_err.code == grpc.StatusCode.INVALID_ARGUMENT and top_err.reason == "GRADE_NOT_ALLOWED"
    assert top_err.metadata == {"column": column, "use": use}
    assert f"column {column!r}" in top_err.message and top_err.message.endswith(f"used as {use}")
    assert _refusal(stubs, nested) == top_err, construct


@pytest.mark.parametrize(("construct", "nested", "top", "misuse"), MISUSES, ids=[m[0] for m in MISUSES])
def test_sandbox_refuses_a_nested_misuse_like_its_top_level_form(
    graded_engine: Engine, construct: str, nested: str, top: str, misuse: tuple[str, str]
) -> None:
    """The sandbox, handed the analyzer's plan directly, refuses before touching data, with the same reply."""
    top_reply = _execute(graded_engine, top)
    column, use = misuse
    assert isinstance(top_reply, ErrorReply) and top_reply.kind == "rejected"
    assert top_reply.message.startswith(f"column {column!r} of grade ")
    assert top_reply.message.endswith(f"may not be used as {use}")
    assert _execute(graded_engine, nested) == top_reply, construct


@pytest.mark.parametrize("sql", ALLOWED)
def test_allowed_uses_are_answered_by_gateway_and_sandbox(
    stubs: Stubs, graded_engine: Engine, sql: str
) -> None:
    """Controls: the constructs themselves are not what is refused."""
    assert len(_run(stubs, sql).rows) >= 1
    assert isinstance(_execute(graded_engine, sql), ExecuteResult)


# -- models ----------------------------------------------------------------------------------------


def _model_stub(env: Env, gw: Gateway) -> m_grpc.ModelServiceStub:
    return m_grpc.ModelServiceStub(channel_for(env, gw.port, "analyst"))


def _train(stub: m_grpc.ModelServiceStub, table: str, features: list[str], label: str,
           purpose: str = "testing") -> m_pb.TrainModelResponse:
    return stub.TrainModel(m_pb.TrainModelRequest(
        dataset="registry", purpose=purpose, table=table, features=features, label=label,
        kind=m_pb.MODEL_KIND_LINEAR, privacy_loss=common_pb.PrivacyLoss(epsilon=20.0),
        request_id=uuid.uuid4().hex))


MODEL_MISUSES = [
    # (table, purpose, features, label, column, use, field)
    ("residents", "testing", ["birth_year", "region"], "income",
     "residents.region", "aggregate_input", "features"),
    ("social_insurance", "approx-testing", ["month", "region"], "contribution",
     "social_insurance.region", "group_key", "features"),  # one-hot: a coefficient per region
    ("social_insurance", "approx-testing", ["month"], "contribution",
     "social_insurance.contribution", "aggregate_input", "label"),
]


@pytest.mark.parametrize(("table", "purpose", "features", "label", "column", "use", "field"), MODEL_MISUSES)
def test_model_features_and_labels_are_graded(
    env: Env, graded_gateway: Gateway, graded_engine: Engine, table: str, purpose: str,
    features: list[str], label: str, column: str, use: str, field: str,
) -> None:
    """Training and evaluation refuse a graded-out feature or label: GRADE_NOT_ALLOWED at the gateway
    (nothing charged), `rejected` from the sandbox handed the request directly, with the same message."""
    stub = _model_stub(env, graded_gateway)
    with pytest.raises(grpc.RpcError) as info:
        _train(stub, table, features, label, purpose)
    err = error_details(info.value)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.reason == "GRADE_NOT_ALLOWED"
    assert err.metadata == {"column": column, "use": use, "field": field}
    assert err.message.startswith(f"column {column!r} of grade ") and err.message.endswith(use)
    reply = models.train(graded_engine, TrainRequest(
        "grades-model", "registry", table, "linear", tuple(features), label, 20.0))
    assert reply == ErrorReply("rejected", err.message)
    coefficients = tuple((f"{f}=110000" if f == "region" else f, 0.5) for f in features)
    evaluated = models.evaluate(graded_engine, EvaluateRequest(
        "grades-eval", "registry", table, "linear", coefficients, 0.0, label, 10.0))
    assert evaluated == ErrorReply("rejected", err.message)
    with pytest.raises(grpc.RpcError) as info:
        stub.EvaluateModel(m_pb.EvaluateModelRequest(
            dataset="registry", purpose=purpose, table=table, kind=m_pb.MODEL_KIND_LINEAR,
            coefficients=[m_pb.Coefficient(term=t, value=v) for t, v in coefficients], label=label,
            privacy_loss=common_pb.PrivacyLoss(epsilon=10.0), request_id=uuid.uuid4().hex))
    assert error_details(info.value) == err


def test_allowed_model_is_trained(env: Env, graded_gateway: Gateway, graded_engine: Engine) -> None:
    """Control: public features and a sensitive label (aggregate_input allowed) are trained."""
    resp = _train(_model_stub(env, graded_gateway), "residents", ["birth_year", "sex", "employed"], "income")
    assert [c.name for c in resp.coefficients] == ["birth_year", "sex=M", "employed"]
    reply = models.train(graded_engine, TrainRequest(
        "grades-model-ok", "registry", "residents", "linear", ("birth_year", "sex"), "income", 20.0))
    assert isinstance(reply, TrainResult)
