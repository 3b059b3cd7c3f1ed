"""The sandbox engine on a tiny real dataset: truncation, noise, lock-down, refusals, timeouts."""

from __future__ import annotations

import hashlib
import math
import shutil
import time
from pathlib import Path

import duckdb
import pytest

from sandbox.catalog import load_catalog
from sandbox.engine.engine import Engine
from sandbox.engine.keys import keyed_digest, load_or_create_key
from sandbox.engine.limits import Limits
from sandbox.engine.storage import STORE, table_ref
from sandbox.errors import ConfigError, PlanRejectedError
from sandbox.protocol.messages import (
    Aggregate,
    AggregateKind,
    Binary,
    Column,
    ColumnInfo,
    ErrorReply,
    ExecuteRequest,
    ExecuteResult,
    Expr,
    Literal,
    OutputColumn,
    QueryPlan,
    TableInfo,
)
from tests.helpers import make_agg, make_keys

pytestmark = pytest.mark.integration

K = 2
# person p has (p % 4) + 1 rows: 1, 2, 3, 4, 1, 2, ... ; 40 persons -> 100 raw rows.
N_PERSONS = 40
RAW_ROWS = sum(p % 4 + 1 for p in range(N_PERSONS))
KEPT_ROWS = sum(min(p % 4 + 1, K) for p in range(N_PERSONS))

CATALOG = """
schema = "privacy_gateway.catalog.v1"
data_dir = "."

[datasets.reg]
privacy_unit = "person_id"

[datasets.reg.tables.res]
file = "res.parquet"
max_rows_per_unit = {k}

[datasets.reg.tables.res.columns]
person_id = {{ type = "int64", grade = "identifier" }}
region    = {{ type = "string", grade = "public", domain = ["r0", "r1", "r2", "empty"] }}
income    = {{ type = "int64", grade = "sensitive", lower = 0, upper = 1000 }}
score     = {{ type = "float64", grade = "sensitive", lower = 0.0, upper = 10.0 }}

[datasets.reg.tables.flat]
file = "flat.csv"
max_rows_per_unit = 1

[datasets.reg.tables.flat.columns]
person_id = {{ type = "int64", grade = "identifier" }}
region    = {{ type = "string", grade = "public", domain = ["r0", "r1", "r2"] }}
"""


def _write_data(d: Path) -> None:
    con = duckdb.connect()
    con.execute(
        f"""COPY (
            SELECT p AS person_id, 'r' || (p % 3) AS region,
                   CASE WHEN p = 0 THEN 99999 ELSE 100 END AS income,
                   CASE WHEN p = 1 THEN 'nan'::DOUBLE WHEN p = 2 THEN 'inf'::DOUBLE
                        ELSE 5.0 END AS score
            FROM range({N_PERSONS}) r(p), range(4) c(i) WHERE i <= p % 4
        ) TO '{d / "res.parquet"}' (FORMAT parquet)"""
    )
    con.execute(
        f"COPY (SELECT range AS person_id, 'r' || (range % 3) AS region FROM range(30)) "
        f"TO '{d / 'flat.csv'}' (HEADER)"
    )
    con.close()
    (d / "catalog.toml").write_text(CATALOG.format(k=K))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("engine")
    _write_data(d)
    return d


@pytest.fixture(scope="module")
def engine(data_dir: Path) -> Engine:
    return Engine(load_catalog(data_dir / "catalog.toml"), Limits(query_timeout_ms=5000))


RES = TableInfo(
    "res",
    (
        ColumnInfo("person_id", "int64", "identifier"),
        ColumnInfo("region", "string", "public", domain=("r0", "r1", "r2", "empty")),
        ColumnInfo("income", "int64", "sensitive", lower=0, upper=1000),
        ColumnInfo("score", "float64", "sensitive", lower=0.0, upper=10.0),
    ),
    max_rows_per_unit=K,
)


def agg(kind: AggregateKind, column: str | None = None, weight: float = 1.0) -> Aggregate:
    return make_agg(RES, kind, column, weight)


def _plan(*aggs: Aggregate, where: Expr | None = None, group_by: tuple[str, ...] = ()) -> QueryPlan:
    return QueryPlan(
        "reg", "res", aggs or (Aggregate(AggregateKind.COUNT),),
        (OutputColumn("x", aggregate_index=0),), where, make_keys(RES, group_by),
    )


def _run(engine: Engine, plan: QueryPlan, epsilon: float = 1.0) -> ExecuteResult:
    r = engine.execute(ExecuteRequest("t", plan, epsilon))
    assert isinstance(r, ExecuteResult), r
    return r


def test_truncation_keeps_at_most_k_rows_per_unit(engine: Engine) -> None:
    """Each unit keeps min(its rows, K) rows after loading."""
    con = engine._con
    assert engine.row_counts["reg__res"] == KEPT_ROWS < RAW_ROWS
    per_unit = con.execute(
        f"SELECT person_id, count(*) FROM {table_ref('reg__res')} GROUP BY ALL ORDER BY 1"
    ).fetchall()
    assert per_unit == [(p, min(p % 4 + 1, K)) for p in range(N_PERSONS)]
    assert engine.row_counts["reg__flat"] == 30


def test_truncation_is_stable_under_neighbouring_datasets(data_dir: Path, tmp_path: Path) -> None:
    """Removing one unit changes no other unit's kept rows (the salt does not depend on the data)."""
    con = duckdb.connect()
    src = data_dir / "res.parquet"
    victim = con.execute(f"SELECT person_id FROM '{src}' GROUP BY 1 ORDER BY count(*) DESC LIMIT 1").fetchone()
    assert victim is not None
    neighbour = tmp_path / "n"
    shutil.copytree(data_dir, neighbour)
    con.execute(f"COPY (SELECT * FROM '{src}' WHERE person_id <> {victim[0]}) TO '{neighbour / 'res.parquet'}'")
    con.close()
    q = (f"SELECT person_id, region, income, score::VARCHAR FROM {table_ref('reg__res')} "
         f"WHERE person_id <> {victim[0]} ORDER BY ALL")
    a = Engine(load_catalog(data_dir / "catalog.toml"), truncation_salt="s")
    b = Engine(load_catalog(neighbour / "catalog.toml"), truncation_salt="s")
    assert a._con.execute(q).fetchall() == b._con.execute(q).fetchall()
    assert a.describe().dataset("reg") != b.describe().dataset("reg")  # versions differ, rows do not


def test_describe_carries_a_keyed_data_version(data_dir: Path, engine: Engine) -> None:
    """describe() returns the public catalog with a 16-hex data version and no row counts. The version is
    HMAC-SHA256 under the sandbox's secret of the files' SHA-256, never the bare hash: a bare hash of the
    data is a deterministic function of every record, testable offline by someone who knows the rest."""
    info = engine.describe()
    ds = info.dataset("reg")
    assert ds is not None and len(ds.version) == 16
    h = hashlib.sha256()
    for name, file in (("flat", "flat.csv"), ("res", "res.parquet")):
        h.update(f"{name}\x00{file}\x00".encode() + (data_dir / file).read_bytes() + b"\x00")
    assert ds.version != h.hexdigest()[:16]
    assert {t.name for t in ds.tables} == {"res", "flat"}
    key = b"k" * 32
    same = [Engine(load_catalog(data_dir / "catalog.toml"), version_key=key).describe().dataset("reg")
            for _ in range(2)]
    other = Engine(load_catalog(data_dir / "catalog.toml"), version_key=b"o" * 32).describe().dataset("reg")
    assert same[0] is not None and same[1] is not None and other is not None
    assert same[0].version == same[1].version == keyed_digest(key, h.digest())[:16]
    assert other.version != same[0].version


def test_version_key_file_is_private_and_persists(tmp_path: Path) -> None:
    path = tmp_path / "owner" / "data-version.key"
    key = load_or_create_key(path)
    assert len(key) == 32 and load_or_create_key(path) == key
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="must be 0600"):
        load_or_create_key(path)
    path.chmod(0o600)
    path.write_bytes(b"short")
    with pytest.raises(ConfigError, match="expected 32"):
        load_or_create_key(path)


def test_grouped_counts_cover_domain_and_are_centred(engine: Engine) -> None:
    """Every domain cell is answered (also the empty one), in domain order, close to the truth.

    Discrete Laplace with scale s: P(|noise| >= 20 s) <= 2 exp(-20) ~ 4e-9 per cell, so the false
    failure probability over the 4 cells is < 2e-8.
    """
    r = _run(engine, _plan(group_by=("region",)), epsilon=2.0)
    assert [row.keys for row in r.rows] == [("r0",), ("r1",), ("r2",), ("empty",)]
    truth = {"r0": 0, "r1": 0, "r2": 0, "empty": 0}
    for p in range(N_PERSONS):
        truth[f"r{p % 3}"] += min(p % 4 + 1, K)
    (cost,) = r.costs
    assert cost.scale == pytest.approx(K / 2.0)
    for row in r.rows:
        v = row.values[0]
        assert abs(v.value - truth[str(row.keys[0])]) <= 20 * cost.scale
        assert v.value >= 0 and v.mechanism == "discrete_laplace"
    assert r.dataset_version == engine.describe().datasets[0].version


def test_answers_are_noisy(engine: Engine) -> None:
    """Repeating a query draws fresh noise (all 20 equal has probability < 1e-8 at scale 2)."""
    values = {_run(engine, _plan(), epsilon=1.0).rows[0].values[0].value for _ in range(20)}
    assert len(values) > 1


def test_sum_and_avg_clamp_and_ignore_nan(engine: Engine) -> None:
    """SUM clamps to the bounds; AVG ignores NaN, clamps inf; both near the truth at large epsilon.

    Scales are sensitivity/epsilon; bounds of 20 scales give false-failure probability < 1e-8.
    """
    plan = _plan(agg(AggregateKind.SUM, "income"), agg(AggregateKind.AVG, "score"))
    r = _run(engine, plan, epsilon=1000.0)
    (row,) = r.rows
    true_sum = 1000 * min(1, K) + 100 * (KEPT_ROWS - 1)  # person 0 has one row, clamped to 1000
    sum_cost = r.costs[0]
    assert abs(row.values[0].value - true_sum) <= 20 * sum_cost.scale
    # score: person 1's NaN rows are missing, person 2's inf rows clamp to 10, others 5.0
    n2 = min(2 % 4 + 1, K)
    n1 = min(1 % 4 + 1, K)
    true_avg = (10.0 * n2 + 5.0 * (KEPT_ROWS - n1 - n2)) / (KEPT_ROWS - n1)
    avg = row.values[1]
    assert avg.value == pytest.approx(true_avg, abs=0.05)
    assert 0.0 <= avg.ci_lower <= avg.ci_upper <= 10.0
    assert math.isfinite(avg.stddev)
    assert [c.component for c in r.costs] == ["sum", "sum", "count"]


def test_csv_table_and_where(engine: Engine) -> None:
    """A CSV table is queryable and WHERE filters rows before counting."""
    plan = QueryPlan(
        "reg", "flat", (Aggregate(AggregateKind.COUNT),), (),
        where=Binary("=", Column("region"), Literal("r1")),
    )
    r = _run(engine, plan, epsilon=100.0)
    assert abs(r.rows[0].values[0].value - 10) <= 20 * r.costs[0].scale


@pytest.mark.parametrize(
    ("plan", "epsilon"),
    [
        (QueryPlan("nope", "res", (Aggregate(AggregateKind.COUNT),), ()), 1.0),
        (QueryPlan("reg", "nope", (Aggregate(AggregateKind.COUNT),), ()), 1.0),
        (_plan(agg(AggregateKind.COUNT_COLUMN, "person_id")), 1.0),
        (_plan(where=Binary("=", Column("person_id"), Literal(3))), 1.0),
        (_plan(agg(AggregateKind.SUM, "region")), 1.0),
        (_plan(), 0.0),
        (_plan(), -1.0),
        (_plan(), math.inf),
    ],
)
def test_rejections_before_touching_data(engine: Engine, plan: QueryPlan, epsilon: float) -> None:
    """Unknown names, identifiers, unbounded sums and bad epsilon are 'rejected'."""
    r = engine.execute(ExecuteRequest("t", plan, epsilon))
    assert isinstance(r, ErrorReply) and r.kind == "rejected" and r.message


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/passwd')",
        "FROM '/etc/passwd'",
        "COPY reg__res TO '/tmp/leak.csv'",
        "ATTACH '/tmp/evil.db'",
        "SELECT 1; SELECT 2",
        "SUMMARIZE reg__res",
        "DESCRIBE reg__res",
        "SELECT * FROM reg__res",
        "SELECT count(*) FROM reg__res, reg__res b",
        "SELECT count(*) FROM (SELECT * FROM reg__res)",
        "WITH x AS (SELECT 1) SELECT count(*) FROM reg__res",
        "SELECT count(*) FROM query_table('reg__res')",
        "SELECT current_setting('temp_directory') FROM reg__res",
        "SELECT count(*) FROM reg__res USING SAMPLE 50%",
        "SELECT count(*) FROM reg__res LIMIT 1",
        "SELECT list(income) FROM reg__res",
        "SELECT count(*) FROM reg__res WHERE income > (SELECT max(income) FROM reg__res)",
        "SET VARIABLE v = 1",
        "VALUES (1)",
        "SELECT 1",
        "SELEC garbage",
    ],
)
def test_run_select_guard_refuses(engine: Engine, sql: str) -> None:
    """run_select refuses anything but one plain aggregate SELECT over a loaded table."""
    with pytest.raises(PlanRejectedError):
        engine.run_select(sql)


@pytest.mark.parametrize(
    ("sql", "exc"),
    [
        ("SELECT * FROM read_csv('{data}/flat.csv')", duckdb.PermissionException),
        ("SELECT * FROM read_parquet('{data}/res.parquet')", duckdb.PermissionException),
        ("SELECT * FROM read_text('/etc/passwd')", duckdb.PermissionException),
        ("SELECT * FROM glob('{data}/*')", duckdb.PermissionException),
        ("COPY pgw_store.main.reg__res TO '{data}/leak.csv'", duckdb.PermissionException),
        ("ATTACH '{data}/evil.db' AS evil", duckdb.PermissionException),
        ("INSTALL httpfs", duckdb.PermissionException),
        ("LOAD '{data}/evil.duckdb_extension'", duckdb.PermissionException),
        # replacement scans on file paths are not even resolved once external access is off
        ("SELECT * FROM '/etc/passwd'", duckdb.CatalogException),
    ],
)
def test_locked_connection_itself_refuses_files(
    engine: Engine, data_dir: Path, sql: str, exc: type[Exception]
) -> None:
    """Bypassing the guard, the locked DuckDB connection still cannot touch any file."""
    with pytest.raises(exc):
        engine._con.execute(sql.format(data=data_dir))
    assert not (data_dir / "leak.csv").exists() and not (data_dir / "evil.db").exists()


@pytest.mark.parametrize(
    "sql",
    [
        "SET enable_external_access = true",
        "SET lock_configuration = false",
        "SET max_execution_time = 0",
        "SET memory_limit = '100GiB'",
        "SET temp_directory = '/tmp'",
    ],
)
def test_locked_configuration_cannot_change(engine: Engine, sql: str) -> None:
    """Configuration changes fail on the locked connection and on its cursors."""
    with pytest.raises(duckdb.Error):
        engine._con.execute(sql)
    with pytest.raises(duckdb.Error):
        engine._con.cursor().execute(sql)
    assert engine.verify()
    assert engine._con.execute("SELECT current_setting('allowed_directories')").fetchone() == ([],)


def test_type_mismatch_is_config_error(data_dir: Path, tmp_path: Path) -> None:
    """A column whose file type differs from the catalog is a ConfigError naming file and column."""
    text = (data_dir / "catalog.toml").read_text().replace(
        'region    = { type = "string", grade = "public", domain = ["r0", "r1", "r2", "empty"]',
        'region    = { type = "int64", grade = "public", domain = [1]',
    ).replace('data_dir = "."', f'data_dir = "{data_dir}"')
    (tmp_path / "c.toml").write_text(text)
    with pytest.raises(ConfigError) as info:
        Engine(load_catalog(tmp_path / "c.toml"))
    assert info.value.key == "datasets.reg.tables.res.columns.region.type"
    assert "res.parquet" in info.value.problem and "VARCHAR" in info.value.problem


def test_missing_file_is_config_error(data_dir: Path, tmp_path: Path) -> None:
    """A catalog pointing at a missing file fails at startup with the file key."""
    (tmp_path / "c.toml").write_text((data_dir / "catalog.toml").read_text())
    with pytest.raises(ConfigError) as info:
        Engine(load_catalog(tmp_path / "c.toml"))
    assert info.value.key == "datasets.reg.tables.res.file"


def _heavy(depth: int, counter: list[int]) -> Expr:
    if depth == 0:
        counter[0] += 1
        return Binary("+", Column("income"), Literal(counter[0]))
    op = "%" if depth % 2 else "*"
    return Binary(op, _heavy(depth - 1, counter), _heavy(depth - 1, counter))


def test_runaway_query_is_interrupted(tmp_path: Path) -> None:
    """A heavy plan over 3M rows hits the 50 ms deadline, fails uniformly; the next one works."""
    con = duckdb.connect()
    con.execute(
        f"COPY (SELECT range AS pid, (range % 1000)::BIGINT AS income FROM range(3000000)) "
        f"TO '{tmp_path / 'big.parquet'}'"
    )
    con.close()
    (tmp_path / "big.toml").write_text(
        'schema = "privacy_gateway.catalog.v1"\ndata_dir = "."\n[datasets.big]\n'
        'privacy_unit = "pid"\n[datasets.big.tables.t]\nfile = "big.parquet"\n'
        "max_rows_per_unit = 1\n[datasets.big.tables.t.columns]\n"
        'pid = { type = "int64", grade = "identifier" }\n'
        'income = { type = "int64", grade = "sensitive", lower = 0, upper = 1000 }\n'
    )
    engine = Engine(load_catalog(tmp_path / "big.toml"), Limits(query_timeout_ms=50))
    heavy = QueryPlan(
        "big", "t", (Aggregate(AggregateKind.COUNT),), (),
        where=Binary(">", _heavy(9, [0]), Literal(0)),
    )
    t0 = time.monotonic()
    r = engine.execute(ExecuteRequest("heavy", heavy, 1.0))
    elapsed = time.monotonic() - t0
    assert r == ErrorReply("failed", "")
    assert elapsed < 2.0  # unbounded it takes about 5 s on 2 cores
    ok = engine.execute(ExecuteRequest("next", QueryPlan(
        "big", "t", (Aggregate(AggregateKind.COUNT),), ()), 1.0))
    assert isinstance(ok, ExecuteResult)
    assert abs(ok.rows[0].values[0].value - 3_000_000) <= 20 * ok.costs[0].scale


def test_huge_sums_are_clamped_not_failed(tmp_path: Path) -> None:
    """A sum beyond the noise's exact range is clamped (sensitivity-safe), not a failure."""
    con = duckdb.connect()
    con.execute(
        "COPY (SELECT range AS pid, 9e12::DOUBLE AS v, 9007199254740992::BIGINT AS w "
        f"FROM range(2000)) TO '{tmp_path / 'h.parquet'}'"
    )
    con.close()
    (tmp_path / "h.toml").write_text(
        'schema = "privacy_gateway.catalog.v1"\ndata_dir = "."\n[datasets.h]\n'
        'privacy_unit = "pid"\n[datasets.h.tables.t]\nfile = "h.parquet"\n'
        "max_rows_per_unit = 1\n[datasets.h.tables.t.columns]\n"
        'pid = { type = "int64", grade = "identifier" }\n'
        'v = { type = "float64", grade = "sensitive", lower = 0, upper = 1e13 }\n'
        'w = { type = "int64", grade = "sensitive", lower = 0, upper = 9007199254740992 }\n'
    )
    engine = Engine(load_catalog(tmp_path / "h.toml"))
    for col in ("v", "w"):
        info = load_catalog(tmp_path / "h.toml").datasets[0].tables[0].info
        plan = QueryPlan("h", "t", (make_agg(info, AggregateKind.SUM, col),), ())
        r = engine.execute(ExecuteRequest("h", plan, 1.0))
        assert isinstance(r, ExecuteResult), r


def test_new_aggregates_run_and_stay_in_bounds(engine: Engine) -> None:
    """VAR/STDDEV/quantiles/MIN/MAX/COUNT(DISTINCT unit)/expression SUM run on a float column holding
    NaN and inf; every value is finite and inside its bounds (NaN never reaches OpenDP)."""
    from sandbox.protocol.messages import Func, GroupKey

    clamp = Func("CLAMP", (Binary("*", Column("score"), Literal(2.0)), Literal(0), Literal(15)))
    aggs = (
        Aggregate(AggregateKind.COUNT_DISTINCT_UNIT),
        make_agg(RES, AggregateKind.VAR_SAMP, "score"),
        make_agg(RES, AggregateKind.STDDEV_POP, "income"),
        make_agg(RES, AggregateKind.QUANTILE, "score", quantile=0.5),
        make_agg(RES, AggregateKind.QUANTILE, "income", quantile=0.0),
        make_agg(RES, AggregateKind.QUANTILE, "income", quantile=1.0),
        Aggregate(AggregateKind.SUM, clamp, 1.0, 0.0, 15.0),
    )
    key = GroupKey("r", Func("UPPER", (Column("region"),)), ("R0", "R1", "R2"))
    plan = QueryPlan("reg", "res", aggs, (OutputColumn("x", aggregate_index=0),), None, (key,))
    r = _run(engine, plan, epsilon=50.0)
    assert [row.keys for row in r.rows] == [("R0",), ("R1",), ("R2",)]
    bounds = [(0, math.inf), (0, 50.0), (0, 500.0), (0, 10), (0, 1000), (0, 1000), (0, math.inf)]
    for row in r.rows:
        for v, (lo, hi) in zip(row.values, bounds, strict=True):
            assert lo <= v.value <= hi and v.ci_lower <= v.ci_upper
    assert sum(c.epsilon for c in r.costs) <= 50.0
    people = {0: 14, 1: 13, 2: 13}  # persons p with p % 3 == region index, 40 persons
    for n, row in enumerate(r.rows):
        assert abs(row.values[0].value - people[n]) <= 20 * r.costs[0].scale


def test_sandbox_pricing_memo_hits_only_the_same_plan_and_loss(engine: Engine) -> None:
    """The sandbox remembers a pricing for the exact plan and authorised loss: a repeat is the same costs
    object (no OpenDP calls), another epsilon is priced anew, and a refusal is not remembered."""
    from sandbox.pricing import mechanisms

    info = engine.describe().dataset("reg")
    assert info is not None
    plan = _plan()
    req = ExecuteRequest("memo/1", plan, 1.0, 0.0)
    first = engine._price_memoized(req, info)
    assert first[0] == mechanisms.price(plan, info, 1.0)
    assert engine._price_memoized(ExecuteRequest("memo/2", plan, 1.0, 0.0), info) is first
    other = engine._price_memoized(ExecuteRequest("memo/3", plan, 0.5, 0.0), info)
    assert other is not first and other[0] == mechanisms.price(plan, info, 0.5)
    with pytest.raises(PlanRejectedError):
        engine._price_memoized(ExecuteRequest("memo/4", plan, float("nan"), 0.0), info)
    assert len([k for k in engine._prices if k[1] == "nan"]) == 0


def test_tables_live_compressed_in_the_store_and_only_there(engine: Engine) -> None:
    """The loaded rows are in the attached store (sandbox.engine.storage): string columns dictionary-encoded, numbers
    in none of the disabled numeric codecs; the default database holds no copy, so a bare table name binds
    to nothing; the guard accepts the store's qualified name for loaded tables only."""
    con = engine._con
    codecs = {
        (col, str(comp)) for col, comp in con.execute(
            f"SELECT column_name, compression FROM pragma_storage_info('{STORE}.main.reg__res') "
            "WHERE segment_type <> 'VALIDITY'").fetchall()
    }
    by_col: dict[str, set[str]] = {}
    for col, comp in codecs:
        by_col.setdefault(col, set()).add(comp.upper())
    assert by_col["region"] <= {"DICT_FSST", "DICTIONARY", "FSST", "CONSTANT"}, by_col
    numeric_codecs = {"BITPACKING", "ALP", "ALPRD", "CHIMP", "PATAS", "ZSTD"}
    for col in ("person_id", "income", "score"):
        assert not by_col[col] & numeric_codecs, by_col
    assert not con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name <> ?", [STORE]).fetchall()
    with pytest.raises(duckdb.CatalogException):
        con.execute("SELECT count(*) FROM reg__res")
    assert engine.run_select(f"SELECT count(*) FROM {table_ref('reg__res')}") == [(KEPT_ROWS,)]
    for sql in ("SELECT count(*) FROM memory.main.reg__res", f"SELECT count(*) FROM {STORE}.other.reg__res",
                "SELECT count(*) FROM system.main.reg__res", f"SELECT count(*) FROM {table_ref('nope')}"):
        with pytest.raises(PlanRejectedError):
            engine.run_select(sql)
