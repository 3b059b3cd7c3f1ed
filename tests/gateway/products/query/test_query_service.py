"""End to end through the generated stubs: real gateway, real sandbox process, real DuckDB and OpenDP."""

from __future__ import annotations

import math
import uuid
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from privacy_gateway.v1 import budget_service_pb2 as b_pb
from privacy_gateway.v1 import catalog_service_pb2 as cat_pb
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import query_service_pb2 as q_pb

from gateway.cli.client import error_details
from tests.helpers import Env, Stubs, channel_for, fresh, stubs_for

pytestmark = pytest.mark.integration


def run(stubs: Stubs, sql: str, epsilon: float = 1.0, *, purpose: str = "testing",
        dataset: str = "registry", request_id: str = "") -> q_pb.RunQueryResponse:
    """RunQuery with the common fields filled in."""
    return stubs.query.RunQuery(q_pb.RunQueryRequest(
        dataset=dataset, sql=sql, purpose=purpose, request_id=request_id,
        privacy_loss=common_pb.PrivacyLoss(epsilon=epsilon)))


def fails(call, *args, **kwargs):  # type: ignore[no-untyped-def]
    """The ErrorDetails of a call that must fail."""
    with pytest.raises(grpc.RpcError) as info:
        call(*args, **kwargs)
    return error_details(info.value)


def value(cell: q_pb.Cell) -> float:
    """A numeric cell's value."""
    kind = cell.WhichOneof("value")
    return float(getattr(cell, kind or "double_value"))


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    return math.fsum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


def test_count_answer_has_noise_interval_and_budget(analyst: Stubs, env: Env) -> None:
    """A COUNT comes back with mechanism, scale, stddev, 95% interval, cost and remaining budget."""
    resp = run(analyst, fresh("SELECT COUNT(*) AS n FROM residents"), epsilon=0.5)
    assert [c.name for c in resp.columns] == ["n"]
    assert resp.columns[0].noisy and resp.columns[0].type == common_pb.COLUMN_TYPE_INT64
    cell = resp.rows[0].cells[0]
    assert cell.noise.mechanism == "discrete_laplace"
    assert cell.noise.scale == pytest.approx(2.0)
    assert cell.confidence_interval.level == 0.95
    assert cell.confidence_interval.lower <= value(cell) <= cell.confidence_interval.upper
    assert 0 < resp.privacy_cost.epsilon <= 0.5
    assert resp.privacy_cost.epsilon == pytest.approx(0.5, rel=1e-12)
    # remaining is the tightest level: this grant, the organisation (other purposes, e.g. the approx_dp
    # partition-selection tests sharing this session's gateway), or the data owner's cap
    assert 0 <= resp.budget.remaining.epsilon <= (
        resp.budget.budget.epsilon - resp.budget.spent.epsilon + 1e-9)
    assert resp.budget.refreshes_at or resp.budget.period
    assert resp.dataset_version and resp.request_id


@pytest.mark.statistical
def test_count_varies_and_centres_on_truth(analyst: Stubs, env: Env) -> None:
    """200 COUNTs at epsilon 1: they vary, centre on the truth, and the 95% intervals cover it.

    False-failure probability: all 200 equal < 0.47^199; coverage below 173/200 when the true rate is
    >= 0.95 has probability binomial_cdf(172, 200, 0.95) < 1e-6 (asserted below); the mean of 200
    discrete Laplace(1) noises (sd 1.36) is off by more than 1.5 (15 standard errors) with
    probability < 1e-12 (Bernstein).
    """
    truth = env.exact("SELECT COUNT(*) FROM residents")[0][0]
    answers, covered = [], 0
    for _ in range(200):
        cell = run(analyst, fresh("SELECT COUNT(*) FROM residents"), epsilon=1.0).rows[0].cells[0]
        answers.append(value(cell))
        covered += cell.confidence_interval.lower <= truth <= cell.confidence_interval.upper
    assert binomial_cdf(172, 200, 0.95) < 1e-6
    assert len(set(answers)) > 1
    assert covered >= 173
    assert abs(math.fsum(answers) / len(answers) - truth) < 1.5


@pytest.mark.statistical
def test_avg_and_sum_intervals_are_honest(analyst: Stubs, env: Env) -> None:
    """100 AVG+SUM answers: each interval covers the truth at >= 95% (false failure < 1e-6)."""
    sql = ("SELECT AVG(income) AS a, SUM(income) AS s FROM residents "
           "WHERE birth_year BETWEEN 1960 AND 1990 AND birth_year < {}")
    exact = env.exact(
        "SELECT AVG(LEAST(GREATEST(income, 0), 2000000)), SUM(LEAST(GREATEST(income, 0), 2000000))"
        " FROM residents WHERE birth_year BETWEEN 1960 AND 1990")[0]
    cover_a = cover_s = 0
    for i in range(100):
        row = run(analyst, sql.format(3000 + i), epsilon=2.0).rows[0]
        a, s = row.cells
        cover_a += a.confidence_interval.lower <= exact[0] <= a.confidence_interval.upper
        cover_s += s.confidence_interval.lower <= exact[1] <= s.confidence_interval.upper
    assert binomial_cdf(80, 100, 0.95) < 5e-7  # per check; both together < 1e-6
    assert cover_a >= 81 and cover_s >= 81


def test_group_by_public_domain_answers_every_value(analyst: Stubs) -> None:
    """GROUP BY a public key answers every declared value, also those no row has."""
    resp = run(analyst, "SELECT month, COUNT(*) AS n FROM social_insurance "
                        "WHERE month >= '2025-03' AND month <= '2025-03' GROUP BY month", epsilon=1.0)
    months = [r.cells[0].string_value for r in resp.rows]
    assert months == [f"2025-{m:02d}" for m in range(1, 13)]
    assert resp.plan.group_by_mode == "public_domain"
    assert resp.plan.row_count == 12
    assert all(r.cells[1].HasField("confidence_interval") for r in resp.rows)


def test_where_literals_narrow_a_public_domain(analyst: Stubs) -> None:
    """`key IN (...)` / `key = literal` in the WHERE clause restrict the answered keys to those values (read
    from the query text, never the data); a filter that excludes every value is refused before running."""
    resp = run(analyst, "SELECT month, sex, COUNT(*) AS n FROM social_insurance AS s JOIN residents AS r "
                        "ON s.person_id = r.person_id WHERE s.month IN ('2025-02', '2025-01') AND r.sex = 'F' "
                        "GROUP BY s.month, r.sex", epsilon=1.0)
    assert [(r.cells[0].string_value, r.cells[1].string_value) for r in resp.rows] == [
        ("2025-01", "F"), ("2025-02", "F")]
    assert resp.plan.row_count == 2
    with pytest.raises(grpc.RpcError) as info:
        run(analyst, "SELECT month, COUNT(*) AS n FROM social_insurance WHERE month = '2031-01' GROUP BY month",
            epsilon=1.0)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "excludes every value of the GROUP BY key month" in (info.value.details() or "")


def test_explain_costs_nothing(analyst: Stubs) -> None:
    """ExplainQuery returns the plan and cost, and the budget does not move."""
    before = analyst.budget.GetPrivacyBudget(b_pb.GetPrivacyBudgetRequest(dataset="registry"))
    ex = analyst.query.ExplainQuery(q_pb.ExplainQueryRequest(
        dataset="registry", purpose="testing", sql="SELECT AVG(income) FROM residents",
        privacy_loss=common_pb.PrivacyLoss(epsilon=1.0)))
    after = analyst.budget.GetPrivacyBudget(b_pb.GetPrivacyBudgetRequest(dataset="registry"))
    assert [r.component for r in ex.plan.releases] == ["sum", "count"]
    assert math.fsum(r.privacy_loss.epsilon for r in ex.plan.releases) == pytest.approx(
        ex.privacy_cost.epsilon)
    assert ex.privacy_cost.epsilon <= 1.0 and ex.affordable
    assert before.grants[0].spent.epsilon == after.grants[0].spent.epsilon


REFUSED = [
    "SELECT * FROM residents",
    "SELECT income FROM residents",
    "SELECT id_number, COUNT(*) FROM residents GROUP BY id_number",
    "SELECT COUNT(*) FROM residents WHERE id_number = '110105194912310021'",
    "SELECT 1",
    "SELECT COUNT(*) FROM residents; DROP TABLE residents",
    "CREATE TABLE x AS SELECT 1",
    "INSERT INTO residents VALUES (1)",
    "DELETE FROM residents",
    "COPY residents TO '/tmp/leak.csv'",
    "ATTACH '/tmp/evil.db'",
    "PRAGMA database_list",
    "SET threads = 1",
    "SELECT COUNT(*) FROM read_csv('/etc/passwd')",
    "SELECT COUNT(*) FROM '/etc/passwd'",
    "DESCRIBE residents",
    "SUMMARIZE residents",
    "SELECT income, COUNT(*) FROM residents GROUP BY income",
    "SELECT MODE(income) FROM residents",
    "SELEC COUNT(*) FROM residents",
]


@pytest.mark.parametrize("sql", REFUSED)
def test_refused_query_is_invalid_argument_and_free(analyst: Stubs, sql: str) -> None:
    """Each refused class gets INVALID_ARGUMENT with an ErrorInfo reason, and charges nothing."""
    before = analyst.budget.GetPrivacyBudget(b_pb.GetPrivacyBudgetRequest()).grants[0].spent
    err = fails(run, analyst, sql)
    after = analyst.budget.GetPrivacyBudget(b_pb.GetPrivacyBudgetRequest()).grants[0].spent
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.reason and err.reason.isupper()
    assert before.epsilon == after.epsilon


@pytest.mark.parametrize("epsilon", [float("nan"), float("inf"), 0.0, -1.0, 1e-9, 5e-324, 101.0])
def test_bad_epsilon_is_refused_before_anything(analyst: Stubs, epsilon: float) -> None:
    """NaN, infinite, zero, negative and above-cap epsilons are INVALID_ARGUMENT."""
    err = fails(run, analyst, "SELECT COUNT(*) FROM residents", epsilon=epsilon)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.reason in ("INVALID_PRIVACY_LOSS", "PRIVACY_LOSS_ABOVE_QUERY_CAP")


def test_missing_privacy_loss_is_refused(analyst: Stubs) -> None:
    """A request without privacy_loss is INVALID_ARGUMENT."""
    err = fails(analyst.query.RunQuery, q_pb.RunQueryRequest(
        dataset="registry", purpose="testing", sql="SELECT COUNT(*) FROM residents"))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT


def test_bad_epsilon_checked_before_sql(analyst: Stubs) -> None:
    """Epsilon is validated before the SQL: a NaN epsilon with bad SQL reports the epsilon."""
    err = fails(run, analyst, "DROP TABLE residents", epsilon=float("nan"))
    assert err.reason == "INVALID_PRIVACY_LOSS"


def test_unknown_and_ungranted_datasets_look_the_same(analyst: Stubs) -> None:
    """No grant and no such dataset both give PERMISSION_DENIED with the same reason."""
    a = fails(run, analyst, "SELECT COUNT(*) FROM enterprises", dataset="enterprises")
    b = fails(run, analyst, "SELECT COUNT(*) FROM x", dataset="no_such_dataset")
    c = fails(run, analyst, "SELECT COUNT(*) FROM residents", purpose="marketing")
    assert {a.code, b.code, c.code} == {grpc.StatusCode.PERMISSION_DENIED}
    assert a.reason == b.reason == c.reason == "DATASET_ACCESS_DENIED"


def test_unknown_identity_is_unauthenticated(env: Env, gateway) -> None:  # type: ignore[no-untyped-def]
    """A certificate from our CA whose name is in no policy gets UNAUTHENTICATED on every service."""
    ch = channel_for(env, gateway.port, "stranger")
    s = stubs_for(ch)
    for call, req in [
        (s.query.RunQuery, q_pb.RunQueryRequest(dataset="registry", sql="SELECT COUNT(*) FROM residents",
                                                purpose="testing",
                                                privacy_loss=common_pb.PrivacyLoss(epsilon=1))),
        (s.catalog.ListDatasets, cat_pb.ListDatasetsRequest()),
        (s.budget.GetPrivacyBudget, b_pb.GetPrivacyBudgetRequest()),
    ]:
        assert fails(call, req).code == grpc.StatusCode.UNAUTHENTICATED
    ch.close()


def test_foreign_ca_and_no_certificate_never_connect(env: Env, gateway) -> None:  # type: ignore[no-untyped-def]
    """A client certificate from another CA, or none, is refused in the TLS handshake."""
    ch = channel_for(env, gateway.port, "analyst", tls_dir=env.foreign_tls_dir)
    err = fails(stubs_for(ch).catalog.ListDatasets, cat_pb.ListDatasetsRequest(), timeout=10)
    assert err.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)
    ch.close()
    creds = grpc.ssl_channel_credentials(root_certificates=(env.tls_dir / "ca.crt").read_bytes())
    ch = grpc.secure_channel(f"127.0.0.1:{gateway.port}", creds)
    err = fails(stubs_for(ch).catalog.ListDatasets, cat_pb.ListDatasetsRequest(), timeout=10)
    assert err.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED)
    ch.close()
    ch = grpc.insecure_channel(f"127.0.0.1:{gateway.port}")
    err = fails(stubs_for(ch).catalog.ListDatasets, cat_pb.ListDatasetsRequest(), timeout=10)
    assert err.code == grpc.StatusCode.UNAVAILABLE
    ch.close()


def test_catalog_shows_public_part_only(analyst: Stubs) -> None:
    """ListDatasets shows granted datasets with bounds, domains and grades; no file paths."""
    resp = analyst.catalog.ListDatasets(cat_pb.ListDatasetsRequest())
    assert [d.name for d in resp.datasets] == ["registry"]
    d = resp.datasets[0]
    assert d.privacy_unit == "person_id" and list(d.purposes) == ["approx-testing", "testing"]
    cols = {c.name: c for t in d.tables for c in t.columns}
    assert cols["income"].has_bounds and cols["income"].upper == 2_000_000
    assert cols["id_number"].grade == "identifier" and not cols["id_number"].groupable
    assert list(cols["sex"].domain) == ["F", "M"]
    assert "parquet" not in str(resp)


def test_budget_exhaustion_refuses_and_charges_nothing(env: Env, gateway) -> None:  # type: ignore[no-untyped-def]
    """planner (budget 1.0): two 0.5 queries pass, the third is RESOURCE_EXHAUSTED and free."""
    ch = channel_for(env, gateway.port, "planner")
    s = stubs_for(ch)
    sql = "SELECT COUNT(*) FROM residents"
    for _ in range(2):
        run(s, fresh(sql), epsilon=0.5, purpose="planning")
    err = fails(run, s, fresh(sql), epsilon=0.5, purpose="planning")
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.reason == "PRIVACY_BUDGET_EXHAUSTED"
    assert {"requestedEpsilon", "remainingEpsilon"} <= set(err.metadata)
    grant = s.budget.GetPrivacyBudget(b_pb.GetPrivacyBudgetRequest()).grants[0]
    assert grant.spent.epsilon == pytest.approx(1.0, abs=1e-12) and grant.spent.epsilon <= 1.0
    ch.close()


def test_concurrent_queries_never_overspend(env: Env, gateway) -> None:  # type: ignore[no-untyped-def]
    """32 concurrent queries of epsilon 1/8 against a budget of 1: exactly 8 are answered."""
    ch = channel_for(env, gateway.port, "racer")
    s = stubs_for(ch)

    queries = [fresh("SELECT COUNT(*) FROM residents") for _ in range(32)]

    def one(i: int) -> grpc.StatusCode:
        try:
            run(s, queries[i], epsilon=0.125, purpose="racing")
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return,attr-defined]

    with ThreadPoolExecutor(max_workers=32) as pool:
        codes = list(pool.map(one, range(32)))
    assert codes.count(grpc.StatusCode.OK) == 8
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 24
    grant = s.budget.GetPrivacyBudget(b_pb.GetPrivacyBudgetRequest()).grants[0]
    assert grant.spent.epsilon == 1.0
    ch.close()


def test_retry_with_same_request_id_replays_release(analyst: Stubs) -> None:
    """The same request_id returns the identical release and is charged once."""
    rid = str(uuid.uuid4())
    sql = fresh("SELECT sex, AVG(income) FROM residents GROUP BY sex")
    first = run(analyst, sql, request_id=rid)
    spent = analyst.budget.GetPrivacyBudget(b_pb.GetPrivacyBudgetRequest()).grants[0].spent.epsilon
    second = run(analyst, sql, request_id=rid)
    after = analyst.budget.GetPrivacyBudget(b_pb.GetPrivacyBudgetRequest()).grants[0].spent.epsilon
    assert second.replayed and not first.replayed
    assert list(second.rows) == list(first.rows)
    assert spent == after
    err = fails(run, analyst, fresh("SELECT COUNT(*) FROM residents"), request_id=rid)
    assert err.code == grpc.StatusCode.ALREADY_EXISTS and err.reason == "REQUEST_ID_REUSED"


def test_same_query_again_is_the_same_release_at_no_cost(analyst: Stubs) -> None:
    """The charge-once cache: an identical query (even rewritten with other spacing/case) is free."""
    sql = fresh("SELECT COUNT(*) AS n, SUM(income) AS s FROM residents")
    first = run(analyst, sql, epsilon=0.5)
    spent = analyst.budget.GetPrivacyBudget(b_pb.GetPrivacyBudgetRequest()).grants[0].spent.epsilon
    second = run(analyst, "  " + sql.lower().replace("select", "SELECT"), epsilon=0.5)
    assert second.cached and not first.cached
    assert list(second.rows) == list(first.rows)
    assert second.privacy_cost.epsilon == 0.0
    assert analyst.budget.GetPrivacyBudget(b_pb.GetPrivacyBudgetRequest()).grants[0].spent.epsilon == spent
    other_epsilon = run(analyst, sql, epsilon=0.25)
    assert not other_epsilon.cached and other_epsilon.privacy_cost.epsilon > 0


def test_weights_split_epsilon(analyst: Stubs) -> None:
    """Per-output weights split epsilon exactly in proportion (3:1 here)."""
    req = q_pb.ExplainQueryRequest(
        dataset="registry", purpose="testing", sql="SELECT COUNT(*) AS n, SUM(income) AS s FROM residents",
        privacy_loss=common_pb.PrivacyLoss(epsilon=1.0), weights={"n": 3.0, "s": 1.0})
    ex = analyst.query.ExplainQuery(req)
    eps = {r.output: r.privacy_loss.epsilon for r in ex.plan.releases}
    assert eps["n"] == pytest.approx(0.75, rel=1e-12) and eps["s"] == pytest.approx(0.25, rel=1e-12)
    bad = q_pb.ExplainQueryRequest(
        dataset="registry", purpose="testing", sql="SELECT COUNT(*) AS n FROM residents",
        privacy_loss=common_pb.PrivacyLoss(epsilon=1.0), weights={"nope": 1.0})
    assert fails(analyst.query.ExplainQuery, bad).reason == "INVALID_WEIGHTS"


def test_accuracy_first_solves_for_epsilon(analyst: Stubs) -> None:
    """A target 95% half-width yields the epsilon whose interval has exactly that half-width."""
    req = q_pb.ExplainQueryRequest(
        dataset="registry", purpose="testing", sql="SELECT COUNT(*) AS n FROM residents",
        accuracy=q_pb.AccuracyTarget(half_width_95=20.0))
    ex = analyst.query.ExplainQuery(req)
    assert ex.plan.releases[0].half_width_95 == pytest.approx(20.0, rel=1e-9)
    # discrete Laplace: scale = accuracy_to_discrete_laplacian_scale(20, 0.05) = 6.5157, eps = 1/scale
    assert ex.privacy_cost.epsilon == pytest.approx(1 / 6.515657600399921, rel=1e-9)
    resp = analyst.query.RunQuery(q_pb.RunQueryRequest(
        dataset="registry", purpose="testing", sql=fresh("SELECT COUNT(*) AS n FROM residents"),
        accuracy=q_pb.AccuracyTarget(half_width_95=20.0)))
    ci = resp.rows[0].cells[0].confidence_interval
    assert ci.upper - ci.lower == pytest.approx(40.0, rel=1e-9)  # ~3000 residents: no clamping at 0
    assert resp.privacy_cost.epsilon == pytest.approx(ex.privacy_cost.epsilon, rel=1e-12)
    too_tight = q_pb.ExplainQueryRequest(
        dataset="registry", purpose="testing", sql="SELECT SUM(income) FROM residents",
        accuracy=q_pb.AccuracyTarget(half_width_95=1.0))
    err = fails(analyst.query.ExplainQuery, too_tight)
    assert err.reason == "PRIVACY_LOSS_ABOVE_QUERY_CAP" and "requiredEpsilon" in err.metadata
    avg = q_pb.ExplainQueryRequest(
        dataset="registry", purpose="testing", sql="SELECT AVG(income) FROM residents",
        accuracy=q_pb.AccuracyTarget(half_width_95=100.0))
    assert fails(analyst.query.ExplainQuery, avg).reason == "ACCURACY_TARGET_UNSUPPORTED"


def test_health_and_reflection(env: Env, gateway) -> None:  # type: ignore[no-untyped-def]
    """Standard health checking answers SERVING for the query service."""
    ch = channel_for(env, gateway.port, "analyst")
    health = health_pb2_grpc.HealthStub(ch)
    for service in ("", "privacy_gateway.v1.QueryService"):
        resp = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
    ch.close()


def test_expressions_new_aggregates_and_post_processing_end_to_end(analyst: Stubs) -> None:
    """Expression keys, new aggregates and HAVING/ORDER BY/LIMIT through gRPC; the hidden HAVING
    aggregate is charged; post-processing costs nothing extra."""
    sql = (
        "SELECT FLOOR(birth_year / 10) * 10 AS decade, COUNT(DISTINCT person_id) AS people, "
        "MEDIAN(CLAMP(income, 0, 500000)) AS med, STDDEV(income) AS sd "
        "FROM residents GROUP BY FLOOR(birth_year / 10) * 10 "
        "HAVING AVG(income) >= 0 ORDER BY decade DESC LIMIT 3"
    )
    resp = run(analyst, sql, epsilon=4.0)
    decades = [r.cells[0].double_value for r in resp.rows]
    assert decades == [2000.0, 1990.0, 1980.0]
    assert [c.name for c in resp.columns] == ["decade", "people", "med", "sd"]
    outputs = [r.output for r in resp.plan.releases]
    assert "hidden_3" in outputs
    total = sum(r.privacy_loss.epsilon for r in resp.plan.releases)
    assert resp.privacy_cost.epsilon == pytest.approx(total) and total <= 4.0
    for row in resp.rows:
        med = row.cells[2]
        assert 0 <= med.double_value <= 500000
        ci = med.confidence_interval
        assert 0.0 <= ci.lower <= med.double_value <= ci.upper <= 500000.0


def test_data_owner_grade_rules_refuse_cleanly(analyst: Stubs) -> None:
    """A sensitive column as a group key is refused by the owner's grade rules: INVALID_ARGUMENT, free."""
    err = fails(run, analyst, "SELECT income, COUNT(*) FROM residents GROUP BY income")
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.reason == "GRADE_NOT_ALLOWED"
