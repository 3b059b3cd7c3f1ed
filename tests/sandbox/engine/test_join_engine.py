"""Joins, lookups, pre-aggregation, semi-joins and partition selection in the sandbox engine.

Tiny data: 30 people (1 row each in `res`), each with `p % 13` rows in `si` (at most 12 kept), and a
public lookup table `reg` (unique `code`). Plans are built by the real analyzer from SQL.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from gateway.products.query.sql.analyze import analyze
from sandbox.catalog import load_catalog
from sandbox.engine.engine import Engine
from sandbox.errors import ConfigError
from sandbox.plans.relation import plan_relation
from sandbox.pricing import mechanisms
from sandbox.protocol.messages import ExecuteRequest, ExecuteResult, QueryPlan

pytestmark = pytest.mark.integration

N = 30
CATALOG = """
schema = "privacy_gateway.catalog.v1"
data_dir = "."

[datasets.reg]
privacy_unit = "person_id"

[datasets.reg.tables.res]
file = "res.parquet"
max_rows_per_unit = 1

[datasets.reg.tables.res.columns]
person_id = { type = "int64", grade = "identifier" }
region    = { type = "string", grade = "public", domain = ["a", "b", "c"] }
# wide bounds: more than 10,000 integers, so no public domain is derived and GROUP BY age goes
# through DP partition selection
age       = { type = "int64", grade = "public", lower = 0, upper = 100000 }

[datasets.reg.tables.si]
file = "si.parquet"
max_rows_per_unit = 12

[datasets.reg.tables.si.columns]
person_id = { type = "int64", grade = "identifier" }
amount    = { type = "int64", grade = "sensitive", lower = 0, upper = 100 }
month     = { type = "int64", grade = "public", lower = 0, upper = 11 }

[datasets.reg.tables.lookup]
file = "lookup.parquet"
public = true
unique_key = "code"

[datasets.reg.tables.lookup.columns]
code  = { type = "string", grade = "public" }
macro = { type = "string", grade = "public", domain = ["X", "Y"] }
"""


def _write(d: Path, *, lookup_dup: bool = False, extra_person: int | None = None) -> Path:
    con = duckdb.connect()
    extra = "" if extra_person is None else f" UNION ALL SELECT {extra_person}, 'a', 77"
    con.execute(
        f"COPY (SELECT range AS person_id, chr((97 + range % 3)::INTEGER) AS region, "
        f"(20 + range)::BIGINT AS age FROM range({N}){extra}) TO '{d / 'res.parquet'}'"
    )
    # person p has p % 13 rows of amount 10 (person 12 has 12 rows; 13+ is cut to 12 by K)
    con.execute(
        f"COPY (SELECT p AS person_id, 10::BIGINT AS amount, i % 12 AS month FROM range({N}) r(p), range(20) c(i) "
        f"WHERE i < p % 13 + (CASE WHEN p = 25 THEN 10 ELSE 0 END)) TO '{d / 'si.parquet'}'"
    )
    dup = ", ('a', 'Y')" if lookup_dup else ""
    con.execute(
        f"COPY (SELECT * FROM (VALUES ('a', 'X'), ('b', 'X'), ('c', 'Y'){dup}) v(code, macro)) "
        f"TO '{d / 'lookup.parquet'}'"
    )
    con.close()
    (d / "c.toml").write_text(CATALOG)
    return d / "c.toml"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Engine:
    return Engine(load_catalog(_write(tmp_path_factory.mktemp("join"))))


def _exact_join_rows() -> int:
    return sum(min(p % 13 + (10 if p == 25 else 0), 12) for p in range(N))


# eps 100: every discrete-Laplace scale below is <= 0.5, so |noise| >= 4 has probability < 1e-3
# per value; assertions allow +-3 (the float sums +-1 at scale <= 0.5 * 100 / 100).
TOL = 3


def _run(engine: Engine, sql: str, eps: float = 100.0, delta: float = 0.0) -> ExecuteResult:
    plan = analyze(sql, engine.describe().datasets[0])
    r = engine.execute(ExecuteRequest("t", plan, eps, delta))
    assert isinstance(r, ExecuteResult), r
    return r


def _plan(engine: Engine, sql: str) -> QueryPlan:
    return analyze(sql, engine.describe().datasets[0])


def test_unit_join_answers_and_bound(engine: Engine) -> None:
    sql = "SELECT COUNT(*), SUM(s.amount) FROM res r JOIN si s ON r.person_id = s.person_id"
    rel = plan_relation(_plan(engine, sql), engine.describe().datasets[0])
    assert rel.k == 12  # K_join = 1 x 12
    costs = mechanisms.price(_plan(engine, sql), engine.describe().datasets[0], 1.0)
    assert [c.sensitivity for c in costs] == [12.0, 1200.0]
    r = _run(engine, sql)
    n, total = r.rows[0].values
    assert abs(n.value - _exact_join_rows()) <= TOL
    assert abs(total.value - 10 * _exact_join_rows()) <= 400  # scale 24: P(|noise| > 400) ~ 6e-8


def test_person_with_many_rows_is_truncated_in_the_join(engine: Engine) -> None:
    # person 25 has 22 raw rows; only 12 survive, so the join holds 12 rows of that unit
    r = _run(engine, "SELECT COUNT(*) FROM res r JOIN si s USING (person_id) WHERE r.age = 45")
    assert abs(r.rows[0].values[0].value - 12) <= TOL


def test_left_join_keeps_units_without_rows(engine: Engine) -> None:
    r = _run(engine, "SELECT COUNT(*) FROM res r LEFT JOIN si s USING (person_id)")
    people_without = sum(1 for p in range(N) if p % 13 == 0 and p != 25)
    assert abs(r.rows[0].values[0].value - _exact_join_rows() - people_without) <= TOL


def test_semi_join_filters(engine: Engine) -> None:
    expected = sum(1 for p in range(N) if p % 13 + (10 if p == 25 else 0) > 0)
    r = _run(engine, "SELECT COUNT(*) FROM res WHERE person_id IN (SELECT person_id FROM si)")
    assert abs(r.rows[0].values[0].value - expected) <= TOL
    r = _run(
        engine,
        "SELECT COUNT(*) FROM res r WHERE NOT EXISTS "
        "(SELECT 1 FROM si s WHERE s.person_id = r.person_id)",
    )
    assert abs(r.rows[0].values[0].value - (N - expected)) <= TOL


def test_preaggregation_bounds_and_answer(engine: Engine) -> None:
    sql = (
        "SELECT SUM(total), COUNT(*) FROM (SELECT person_id, SUM(amount) AS total "
        "FROM si GROUP BY person_id) t"
    )
    ds = engine.describe().datasets[0]
    rel = plan_relation(_plan(engine, sql), ds)
    assert rel.k == 1
    col = rel.column("t.total")
    assert col is not None and (col.lower, col.upper) == (0, 1200)
    costs = mechanisms.price(_plan(engine, sql), ds, 1.0)
    assert [c.sensitivity for c in costs] == [1200.0, 1.0]
    r = _run(engine, sql)
    total, n = r.rows[0].values
    assert abs(total.value - 10 * _exact_join_rows()) <= 400
    assert abs(n.value - sum(1 for p in range(N) if p % 13 or p == 25)) <= TOL


def test_lookup_join_groups_by_public_domain(engine: Engine) -> None:
    r = _run(engine, "SELECT g.macro, COUNT(*) FROM res r JOIN lookup g ON r.region = g.code "
                     "GROUP BY g.macro")
    got = {row.keys[0]: row.values[0].value for row in r.rows}
    assert set(got) == {"X", "Y"}
    assert abs(got["X"] - 20) <= TOL and abs(got["Y"] - 10) <= TOL


def test_non_unique_public_key_stops_the_sandbox(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Engine(load_catalog(_write(tmp_path, lookup_dup=True)))
    assert info.value.key.endswith("lookup.unique_key")


def test_partition_selection_accounting_and_release(engine: Engine) -> None:
    sql = "SELECT age, COUNT(*) FROM res GROUP BY age"
    ds = engine.describe().datasets[0]
    plan = _plan(engine, sql)
    assert plan.partition_selection
    costs = mechanisms.price(plan, ds, 2.0, 1e-6)
    # the COUNT itself is released by the threshold mechanism, at the whole epsilon: no separate selection
    (sel,) = costs
    assert (sel.aggregate_index, sel.component, sel.mechanism) == (0, "count", "laplace_threshold")
    assert sel.threshold >= 1
    # charged (eps, delta) is exactly OpenDP's map of the threshold mechanism at d_in = (K, K, K), one below
    # the threshold it runs at (mechanisms.THRESHOLD_MARGIN)
    e, d = mechanisms.make_threshold(sel.scale, sel.threshold - 1).map((1, 1, 1))
    assert (sel.epsilon, sel.delta) == (float(e), float(d))
    assert d <= 1e-6
    assert mechanisms.total_epsilon(costs) <= 2.0
    # every age has 1 person: with eps 2 nothing can pass a threshold for delta 1e-6
    r = engine.execute(ExecuteRequest("t", plan, 2.0, 1e-6))
    assert isinstance(r, ExecuteResult) and r.rows == ()
    # with a huge epsilon the threshold is small (>= K) and ages with one person can pass
    r2 = engine.execute(ExecuteRequest("t", plan, 100.0, 0.5))
    assert isinstance(r2, ExecuteResult)
    assert {row.keys[0] for row in r2.rows} <= set(range(20, 20 + N))


def test_partition_selection_refused_without_delta(engine: Engine) -> None:
    plan = _plan(engine, "SELECT age, COUNT(*) FROM res GROUP BY age")
    r = engine.execute(ExecuteRequest("t", plan, 1.0, 0.0))
    assert not isinstance(r, ExecuteResult) and r.kind == "rejected"


@pytest.mark.statistical
def test_differential_unique_key_is_released_with_probability_at_most_delta(
    tmp_path: Path,
) -> None:
    """Neighbouring datasets: one extra person whose age (77) nobody else has.

    With delta = 1e-6 the probability that key 77 is released in one run is at most delta (up to
    the e^eps factor applied to the probability it is released without the person, which is 0).
    200 runs: the chance that a correct mechanism releases it at least once is <= 2e-4 (false
    failure probability).
    """
    with_victim = Engine(load_catalog(_write(tmp_path, extra_person=999)))
    plan = analyze("SELECT age, COUNT(*) FROM res GROUP BY age", with_victim.describe().datasets[0])
    released = 0
    for i in range(200):
        r = with_victim.execute(ExecuteRequest(f"d{i}", plan, 1.0, 1e-6))
        assert isinstance(r, ExecuteResult)
        released += any(row.keys == (77,) for row in r.rows)
    assert released == 0


@pytest.mark.statistical
def test_join_answers_centre_on_the_truth(engine: Engine) -> None:
    """Mean of 400 noisy join counts at eps 0.5 (scale 24, sd ~34): the mean's sd is ~1.7; a
    tolerance of 12 is > 7 sd (false failure < 1e-11)."""
    sql = "SELECT COUNT(*) FROM res r JOIN si s USING (person_id)"
    vals = [_run(engine, sql, eps=0.5).rows[0].values[0].value for _ in range(400)]
    assert abs(sum(vals) / len(vals) - _exact_join_rows()) < 12


# -- issue-expr x issue-join: expressions and the new aggregates over joins and derived relations --


def test_new_aggregates_over_a_join_use_the_joined_k_and_derived_bounds(engine: Engine) -> None:
    """Every component of a join plan uses K = 12 and the clamped bounds of the joined expression;
    COUNT(DISTINCT unit) is at most min(K, cells) = 1 for one cell."""
    sql = ("SELECT COUNT(DISTINCT r.person_id) AS people, SUM(s.amount * 2) AS twice, "
           "MEDIAN(s.amount) AS med, STDDEV(s.amount) AS sd "
           "FROM res r JOIN si s ON r.person_id = s.person_id")
    ds = engine.describe().datasets[0]
    plan = _plan(engine, sql)
    assert plan_relation(plan, ds).k == 12
    assert (plan.aggregates[1].lower, plan.aggregates[1].upper) == (0.0, 200.0)
    costs = mechanisms.price(plan, ds, 4.0)
    by = {(c.aggregate_index, c.component): c for c in costs}
    assert by[(0, "count")].sensitivity == 1.0
    assert by[(1, "sum")].sensitivity == 12 * 200.0
    assert by[(3, "count")].sensitivity == by[(3, "sum")].sensitivity == 12.0
    assert by[(3, "sumsq")].sensitivity == 12.0
    assert by[(2, "quantile")].mechanism == mechanisms.NOISY_MAX
    people_with_rows = sum(1 for p in range(N) if p % 13 + (10 if p == 25 else 0) > 0)
    r = _run(engine, sql)
    people, twice, med, _ = r.rows[0].values
    assert abs(people.value - people_with_rows) <= TOL
    assert abs(twice.value - 20 * _exact_join_rows()) <= 24 * 200 * 0.05 * 40  # scale 48 at eps 100
    assert 0 <= med.value <= 100


@pytest.mark.parametrize(("keys", "reach"), [
    ("r.region, g.macro", 1),  # both from res (one row per person), the lookup through r.region
    ("s.month", 12),  # from si: up to 12 rows per person, 12 months
    ("r.region, s.month", 12),  # res x si: 1 x 12 combinations of one person's rows, 36 cells
    ("g.macro, s.month", 12),
])
def test_count_distinct_unit_over_a_grouped_join_is_priced_by_reach(engine: Engine, keys: str, reach: int) -> None:
    """COUNT(DISTINCT unit) over res JOIN si (K = 12) moves each cell a person reaches by 1: the cells
    one person's rows can fall into, given which table each key comes from (sandbox.plans.relation)."""
    sql = (f"SELECT {keys}, COUNT(DISTINCT r.person_id) FROM res r "
           f"JOIN si s USING (person_id) JOIN lookup g ON r.region = g.code GROUP BY {keys}")
    costs = mechanisms.price(_plan(engine, sql), engine.describe().datasets[0], 1.0)
    assert [c.sensitivity for c in costs] == [reach]


def test_derived_per_unit_columns_have_bounds_in_expressions(engine: Engine) -> None:
    """Bounds of a per-unit subquery's output come from the relation: SUM of [0, 100] over 12 rows is
    [0, 1200]; expressions over it (CLAMP, CASE) derive from that, with K = 1."""
    sql = ("SELECT SUM(t.total) AS s, AVG(CLAMP(t.total, 0, 500)) AS a, "
           "SUM(CASE WHEN t.n >= 6 THEN 1 ELSE 0 END) AS many FROM "
           "(SELECT person_id, SUM(amount) AS total, COUNT(*) AS n FROM si GROUP BY person_id) t")
    ds = engine.describe().datasets[0]
    plan = _plan(engine, sql)
    assert plan_relation(plan, ds).k == 1
    assert [(a.lower, a.upper) for a in plan.aggregates] == [(0.0, 1200.0), (0.0, 500.0), (0.0, 1.0)]
    costs = mechanisms.price(plan, ds, 3.0)
    assert [c.sensitivity for c in costs] == [1200.0, 250.0, 1.0, 1.0]  # AVG: sum around the centre 250
    r = _run(engine, sql)
    s, _, many = r.rows[0].values
    # eps 100 over 3 aggregates: the sum's share is 100/3 at sensitivity 1200, scale 36;
    # P(|noise| > 576) = e^-16 ~ 1e-7
    assert abs(s.value - 10 * _exact_join_rows()) <= 12 * 48
    truth_many = sum(1 for p in range(N) if min(p % 13 + (10 if p == 25 else 0), 12) >= 6)
    assert abs(many.value - truth_many) <= TOL


def test_expression_key_on_a_derived_column_has_a_public_domain(engine: Engine) -> None:
    """A per-unit count lies in [0, K] = [0, 12]: grouping by an expression over it uses the public
    domain computed from those integers, so no partition selection (and no delta) is needed."""
    sql = ("SELECT CASE WHEN t.n >= 6 THEN 'many' ELSE 'few' END AS k, COUNT(*) FROM "
           "(SELECT person_id, COUNT(*) AS n FROM si GROUP BY person_id) t "
           "GROUP BY CASE WHEN t.n >= 6 THEN 'many' ELSE 'few' END")
    plan = _plan(engine, sql)
    assert not plan.partition_selection and plan.group_by[0].domain == ("few", "many")
    r = _run(engine, sql)
    assert [row.keys for row in r.rows] == [("few",), ("many",)]


def test_partition_selection_with_new_aggregates(engine: Engine) -> None:
    """Under partition selection quantiles, COUNT(DISTINCT unit) and variances are released on the
    selected keys only; the keys are selected on COUNT(DISTINCT unit), which the threshold mechanism
    releases (d_in (1, 1, 1): one row per person)."""
    sql = ("SELECT age, COUNT(DISTINCT person_id), MEDIAN(CLAMP(age, 0, 100)), VAR_POP(CLAMP(age, 0, 100)) "
           "FROM res GROUP BY age")
    ds = engine.describe().datasets[0]
    plan = _plan(engine, sql)
    assert plan.partition_selection
    costs = mechanisms.price(plan, ds, 100.0, 0.5)
    assert all(c.component != "select" for c in costs)
    by = {(c.aggregate_index, c.component): c for c in costs}
    assert by[(0, "count")].sensitivity == 1 and by[(0, "count")].mechanism == "laplace_threshold"
    r = engine.execute(ExecuteRequest("t", plan, 100.0, 0.5))
    assert isinstance(r, ExecuteResult)
    for row in r.rows:
        assert row.keys[0] in range(20, 20 + N)
        assert 0 <= row.values[1].value <= 100 and len(row.values) == 3
