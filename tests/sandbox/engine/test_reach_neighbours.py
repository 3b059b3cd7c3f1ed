"""Neighbouring datasets for each join shape: removing one person moves the per-cell vectors by no more
than the d_in pricing charges for the cells that person can reach (`sandbox.plans.relation.plan_reach`).

For every person u of a random registry, D minus u is built and the plan's own SQL (compiled by the
sandbox's compiler from the analyzer's plan) is run on D and on D minus u. Per group key the test
compares per-key row counts (what COUNT(*) and key selection see) and per-key counts of people
(COUNT(DISTINCT person_id)): the number of keys that change (l0) must be at most the reach R, the row
counts must move by at most K in all, the counts of people by 1 in each of at most R keys. Where the
bound is tight the data attains it, so an under-priced shape fails.
"""

from __future__ import annotations

import random

import duckdb
import pytest

from gateway.products.query.sql.analyze import analyze
from sandbox.catalog import load_catalog
from sandbox.plans.compile import compile_plan
from sandbox.plans.relation import plan_reach, plan_relation
from sandbox.pricing import mechanisms
from sandbox.protocol.messages import AggregateKind, DatasetInfo

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
area      = { type = "string", grade = "public" }

[datasets.reg.tables.si]
file = "si.parquet"
max_rows_per_unit = 12

[datasets.reg.tables.si.columns]
person_id = { type = "int64", grade = "identifier" }
month     = { type = "int64", grade = "public", lower = 0, upper = 11 }
region    = { type = "string", grade = "public", domain = ["a", "b", "c"] }
amount    = { type = "int64", grade = "sensitive", lower = 0, upper = 100 }

[datasets.reg.tables.visits]
file = "visits.parquet"
max_rows_per_unit = 5

[datasets.reg.tables.visits.columns]
person_id = { type = "int64", grade = "identifier" }
kind      = { type = "string", grade = "public", domain = ["x", "y", "z", "w", "v"] }

[datasets.reg.tables.lookup]
file = "lookup.parquet"
public = true
unique_key = "code"

[datasets.reg.tables.lookup.columns]
code  = { type = "string", grade = "public" }
macro = { type = "string", grade = "public", domain = ["X", "Y"] }
name  = { type = "string", grade = "public" }
"""

PEOPLE = 40
SHAPES: dict[str, tuple[str, str, int, int] | tuple[str, str, int, int, int]] = {
    # unit join of two private tables
    "join: key from the one-row table": ("res r JOIN si s ON r.person_id = s.person_id", "r.region", 12, 1),
    "join: key from the 12-row table": ("res r JOIN si s ON r.person_id = s.person_id", "s.month", 12, 12),
    "join: keys from both tables": ("res r JOIN si s ON r.person_id = s.person_id", "r.region, s.month", 12, 12),
    "join: key without a domain, one-row table": ("res r JOIN si s ON r.person_id = s.person_id", "r.area", 12, 1),
    "left join: key from the one-row table": ("res r LEFT JOIN si s ON r.person_id = s.person_id", "r.area", 12, 1),
    "three tables: keys from the 12- and 5-row tables": (
        "res r JOIN si s ON r.person_id = s.person_id JOIN visits v ON r.person_id = v.person_id",
        "s.month, v.kind", 60, 60),
    "three tables: key from the 5-row table": (
        "res r JOIN si s ON r.person_id = s.person_id JOIN visits v ON r.person_id = v.person_id",
        "v.kind", 60, 5),
    # lookup join: the lookup's columns follow the lookup key's table
    "lookup through the one-row table": (
        "res r JOIN si s ON r.person_id = s.person_id JOIN lookup g ON r.region = g.code", "g.macro", 12, 1),
    "lookup through the 12-row table": (
        "si s JOIN lookup g ON s.region = g.code", "g.macro", 12, 2),
    "lookup without a domain through the one-row table": (
        "res r JOIN si s ON r.person_id = s.person_id JOIN lookup g ON r.region = g.code", "g.name", 12, 1),
    "lookup without a domain through the 12-row table": (
        "si s JOIN lookup g ON s.region = g.code", "g.name", 12, 12, 3),  # the data has 3 names
    # per-unit subquery: one row per person, joined to a table with several
    "per-unit subquery joined to 5-row visits": (
        "(SELECT person_id, COUNT(*) AS n FROM si GROUP BY person_id) t "
        "JOIN visits v ON t.person_id = v.person_id", "CASE WHEN t.n >= 6 THEN 'many' ELSE 'few' END", 5, 1),
    "per-unit subquery, key from the joined table": (
        "(SELECT person_id, COUNT(*) AS n FROM si GROUP BY person_id) t "
        "JOIN visits v ON t.person_id = v.person_id", "v.kind", 5, 5),
}


def _data(seed: int = 5) -> tuple[list[tuple[object, ...]], ...]:
    rng = random.Random(seed)
    res, si, visits = [], [], []
    for p in range(PEOPLE):
        res.append((p, rng.choice("abc"), rng.choice(["n1", "n2", "n3", "n4"])))
        # person 0 has all 12 months in 3 regions and all 5 visit kinds: the worst case for reach
        months = range(12) if p == 0 else rng.sample(range(12), rng.randint(0, 12))
        for m in months:
            si.append((p, m, "abc"[m % 3] if p == 0 else rng.choice("abc"), rng.randint(0, 100)))
        kinds = "xyzwv" if p == 0 else rng.sample("xyzwv", rng.randint(0, 5))
        for k in kinds:
            visits.append((p, k))
    return res, si, visits


def _without(con: duckdb.DuckDBPyConnection, u: int) -> None:
    """Point the plan's table names at D minus person u (u = -1: D itself)."""
    for name in ("res", "si", "visits"):
        con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS SELECT * FROM full_{name} WHERE person_id <> {u}")


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> tuple[DatasetInfo, duckdb.DuckDBPyConnection]:
    d = tmp_path_factory.mktemp("reach")
    (d / "c.toml").write_text(CATALOG)
    ds = load_catalog(d / "c.toml").public({"reg": "v1"}).datasets[0]
    con = duckdb.connect()
    con.execute("CREATE TABLE lookup AS SELECT * FROM (VALUES ('a', 'X', 'Alpha'), ('b', 'X', 'Beta'), "
                "('c', 'Y', 'Gamma')) v(code, macro, name)")
    res, si, visits = _data()
    con.execute("CREATE TABLE full_res (person_id BIGINT, region VARCHAR, area VARCHAR)")
    con.execute("CREATE TABLE full_si (person_id BIGINT, month BIGINT, region VARCHAR, amount BIGINT)")
    con.execute("CREATE TABLE full_visits (person_id BIGINT, kind VARCHAR)")
    for name, rows in (("res", res), ("si", si), ("visits", visits)):
        con.executemany(f"INSERT INTO full_{name} VALUES ({', '.join('?' * len(rows[0]))})", rows)
    return ds, con


def _per_key(con: duckdb.DuckDBPyConnection, sql: str, keys: int) -> dict[tuple[object, ...], list[int]]:
    return {tuple(r[:keys]): [int(v) for v in r[keys:]] for r in con.execute(sql).fetchall()}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_removing_one_person_moves_each_shape_within_its_reach(
    setting: tuple[DatasetInfo, duckdb.DuckDBPyConnection], shape: str,
) -> None:
    ds, con = setting
    source, keys, k, reach, *attained = SHAPES[shape]
    sql = f"SELECT {keys}, COUNT(*) AS rows, COUNT(DISTINCT {_unit(source)}) AS people FROM {source} GROUP BY {keys}"
    plan = analyze(sql, ds)
    rel = plan_relation(plan, ds)
    assert (rel.k, plan_reach(plan, rel)) == (k, reach)
    # what pricing charges: COUNT(*) at K, COUNT(DISTINCT unit) at R; keys selected at (R, K, K) or (R, R, 1)
    comps = {(c.aggregate_index, c.component): c for c in mechanisms.components(plan, ds)}
    assert comps[(0, "count")].sensitivity == k and comps[(1, "count")].sensitivity == reach
    if plan.partition_selection:
        assert plan.aggregates[1].kind is AggregateKind.COUNT_DISTINCT_UNIT
        assert comps[(1, "count")].keys == (reach, reach, 1)
    table = ds.table(plan.table)
    assert table is not None
    compiled = compile_plan(plan, table, sql_table=table.name, unit=ds.privacy_unit, max_cells=10_000, dataset=ds,
                            sql_tables={t.name: t.name for t in ds.tables})
    n_keys = len(plan.group_by)
    _without(con, -1)
    full = _per_key(con, compiled.sql, n_keys)
    col = {c: j for j, c in enumerate(compiled.components)}
    rows_j, people_j = col[(0, "count")], col[(1, "count")]
    worst_l0 = 0
    for u in range(PEOPLE):
        _without(con, u)
        less = _per_key(con, compiled.sql, n_keys)
        cells = set(full) | set(less)
        d_rows = [abs(full.get(c, [0] * 3)[rows_j] - less.get(c, [0] * 3)[rows_j]) for c in cells]
        d_people = [abs(full.get(c, [0] * 3)[people_j] - less.get(c, [0] * 3)[people_j]) for c in cells]
        l0 = sum(1 for x in d_rows if x)
        worst_l0 = max(worst_l0, l0)
        assert l0 <= reach and sum(d_rows) <= k and max(d_rows, default=0) <= k, (shape, u)
        assert sum(1 for x in d_people if x) <= reach and max(d_people, default=0) <= 1, (shape, u)
    # the bound is attained: person 0 reaches every cell it can (or every cell the data has)
    assert worst_l0 == (attained[0] if attained else reach)


def _unit(source: str) -> str:
    return source.split()[1] + ".person_id" if not source.startswith("(") else "t.person_id"
