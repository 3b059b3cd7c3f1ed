"""SQL regeneration from plan trees: exact output, unescapable quoting, static refusals."""

from __future__ import annotations

import duckdb
import pytest
from msgspec.structs import replace

from sandbox.engine.engine import stored_column
from sandbox.engine.guard import check_select
from sandbox.errors import PlanRejectedError
from sandbox.plans.compile import compile_plan
from sandbox.plans.render import quote_ident, render_literal
from sandbox.products.model_sql import check_model_select
from sandbox.protocol.messages import (
    Aggregate,
    AggregateKind,
    Between,
    Binary,
    Column,
    ColumnInfo,
    Expr,
    GroupKey,
    InList,
    IsNull,
    Literal,
    OutputColumn,
    QueryPlan,
    TableInfo,
    Unary,
)
from tests.helpers import make_agg, make_keys

EVIL_COL = 'x"; DROP TABLE t; -- /*'
EVIL_STR = "it's'); DROP TABLE t; -- /* \" \\"
TABLE = TableInfo(
    name="people",
    max_rows_per_unit=2,
    columns=(
        ColumnInfo("pid", "int64", "identifier"),
        ColumnInfo("ssn", "string", "identifier"),
        ColumnInfo("pseudo", "int64", "public"),
        ColumnInfo("region", "string", "public", domain=("a", "b")),
        ColumnInfo("flag", "bool", "internal", domain=(False, True)),
        ColumnInfo("income", "int64", "sensitive", lower=0, upper=100),
        ColumnInfo("score", "float64", "sensitive", lower=-1.0, upper=1.0),
        ColumnInfo(EVIL_COL, "string", "public", domain=(EVIL_STR, "plain")),
        ColumnInfo("free", "string", "public"),
    ),
)


def agg(kind: AggregateKind, column: str | None = None, weight: float = 1.0) -> Aggregate:
    return make_agg(TABLE, kind, column, weight)


def _plan(*aggs: Aggregate, where: Expr | None = None, group_by: tuple[str, ...] = ()) -> QueryPlan:
    return QueryPlan(
        dataset="d",
        table="people",
        aggregates=aggs or (Aggregate(AggregateKind.COUNT),),
        outputs=(OutputColumn("n", aggregate_index=0),),
        where=where,
        group_by=make_keys(TABLE, group_by),
    )


def _compile(plan: QueryPlan, max_cells: int = 1000) -> str:
    return compile_plan(plan, TABLE, sql_table="d__people", unit="pid", max_cells=max_cells).sql


def _con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(
        f'CREATE TABLE "d__people" (pid BIGINT, ssn VARCHAR, pseudo BIGINT, region VARCHAR, '
        f"flag BOOLEAN, income BIGINT, score DOUBLE, {quote_ident(EVIL_COL)} VARCHAR, "
        f"free VARCHAR)"
    )
    con.execute(
        "INSERT INTO d__people VALUES "
        "(1, 's1', 7, 'a', true, 50, 0.5, ?, 'z'), "
        "(2, 's2', 8, 'b', false, 500, 'nan', 'plain', 'y'),"
        "(3, 's3', 9, 'c', NULL, -5, 3.0, 'other', NULL)",
        [EVIL_STR],
    )
    # Store the table as the engine does at load: clamped to the catalog bounds, NaN as NULL.
    stored = ", ".join(f"{stored_column(c)} AS {quote_ident(c.name)}" for c in TABLE.columns)
    con.execute(f'CREATE OR REPLACE TABLE "d__people" AS SELECT {stored} FROM "d__people"')
    return con


def test_known_plan_sql() -> None:
    """A plan with every aggregate, a group key and a filter compiles to the expected SQL.

    Bare bounded columns are aggregated as stored: the engine stores them clamped at load
    (`sandbox.engine.engine.stored_column`), so no per-row clamp or cast is compiled; rows whose key is outside the
    domain are not filtered in SQL but ignored by the engine.
    """
    plan = _plan(
        Aggregate(AggregateKind.COUNT),
        agg(AggregateKind.SUM, "income"),
        agg(AggregateKind.AVG, "score"),
        agg(AggregateKind.COUNT_COLUMN, "free"),
        where=Binary(">", Binary("*", Column("income"), Literal(2)), Literal(-1.5)),
        group_by=("region",),
    )
    assert _compile(plan) == (
        'SELECT "region", count(*), coalesce(sum("income"), 0), '
        'coalesce(fsum(("score" - CAST(0.0 AS DOUBLE))), 0), count("score"), count("free") FROM "d__people" '
        'WHERE ((CAST("income" AS DOUBLE) * CAST(2 AS DOUBLE)) > CAST(-1.5 AS DOUBLE)) '
        'GROUP BY "region"'
    )


def test_literal_rendering() -> None:
    """Literals render by value: quotes doubled, floats cast, booleans and NULL as keywords."""
    assert render_literal("a'b") == "'a''b'"
    assert render_literal(True) == "TRUE" and render_literal(None) == "NULL"
    assert render_literal(-3) == "-3"
    assert render_literal(1e300) == "CAST(1e+300 AS DOUBLE)"
    assert quote_ident('a"b') == '"a""b"'
    for bad in (2**63, float("nan"), "nul\x00"):
        with pytest.raises(PlanRejectedError):
            render_literal(bad)


def test_quotes_in_names_and_literals_cannot_escape() -> None:
    """Names and literals full of quotes, ';' and comments stay one SELECT and match exactly."""
    plan = _plan(
        Aggregate(AggregateKind.COUNT),
        where=Binary(
            "OR",
            Binary("=", Column(EVIL_COL), Literal(EVIL_STR)),
            InList(Column("free"), (Literal("-- x"), Literal("'; SELECT 1; --"))),
        ),
        group_by=(EVIL_COL,),
    )
    sql = _compile(plan)
    con = _con()
    statements = con.extract_statements(sql)
    assert len(statements) == 1 and statements[0].type == duckdb.StatementType.SELECT
    check_select(con, sql, {"d__people"})
    assert con.execute(sql).fetchall() == [(EVIL_STR, 1)]
    assert con.execute("SELECT count(*) FROM d__people").fetchone() == (3,)


def test_compiled_sql_runs_and_clamps() -> None:
    """Compiled SUM/AVG clamp to the bounds, NaN counts as missing; the guard accepts the SQL."""
    plan = _plan(
        agg(AggregateKind.SUM, "income"),
        agg(AggregateKind.AVG, "score"),
        agg(AggregateKind.COUNT_COLUMN, "flag"),
        where=Binary(
            "AND",
            Unary("NOT", IsNull(Column("pseudo"))),
            Between(Unary("-", Column("pseudo")), Literal(-100), Literal(0), negated=False),
        ),
    )
    sql = _compile(plan)
    con = _con()
    check_select(con, sql, {"d__people"})
    # income 50, 500->100, -5->0; score 0.5, NaN (missing), 3.0->1.0; flag non-NULL twice
    assert con.execute(sql).fetchall() == [(150, 1.5, 2, 2)]


def test_integer_avg_centred_sum_is_exact_without_a_per_row_subtraction() -> None:
    """An integer AVG's centred sum is compiled as sum(x) - c * count(x) (in HUGEINT): exactly the sum of
    (x - c) over the non-NULL values, also grouped, with NULLs and values clamped at both bounds."""
    plan = _plan(agg(AggregateKind.AVG, "income"), group_by=("region",))
    sql = _compile(plan)
    assert "HUGEINT" in sql and '- 50)' not in sql  # centre 50 of [0, 100]
    con = _con()
    con.execute("INSERT INTO d__people (pid, region, income) VALUES (4, 'a', NULL), (5, 'b', 100), (6, 'b', 0)")
    check_select(con, sql, {"d__people"})
    got = {r[0]: r[1:] for r in con.execute(sql).fetchall()}
    rows = con.execute("SELECT region, income FROM d__people").fetchall()
    for region in ("a", "b", "c"):
        xs = [x for k, x in rows if k == region and x is not None]
        assert got[region] == (sum(x - 50 for x in xs), len(xs)), region


def test_arithmetic_cannot_raise() -> None:
    """Arithmetic runs in DOUBLE: overflow and division by zero give no data-dependent error."""
    big = Binary("*", Binary("*", Column("income"), Literal(2**62)), Literal(2**62))
    where = Binary("AND", Binary(">", big, Literal(0)), Binary("<>", Binary("/", Column(
        "income"), Literal(0)), Binary("%", Column("pseudo"), Literal(0))))
    sql = _compile(_plan(where=where))
    assert _con().execute(sql).fetchall() == [(2,)]


@pytest.mark.parametrize(
    ("plan", "match"),
    [
        (_plan(where=Binary("=", Column("nope"), Literal(1))), "unknown column"),
        (_plan(agg(AggregateKind.SUM, "nope")), "unknown column"),
        (_plan(where=Binary("=", Column("ssn"), Literal("x"))), "identifier"),
        (_plan(agg(AggregateKind.COUNT_COLUMN, "pid")), "identifier"),
        (_plan(group_by=("pid",)), "identifier"),
        (replace(_plan(), group_by=(GroupKey("free", Column("free"), ()),)), "empty domain"),
        (_plan(group_by=("region", "region")), "twice"),
        (_plan(agg(AggregateKind.SUM, "free")), "numeric expression"),
        (_plan(agg(AggregateKind.AVG, "pseudo")), "finite bounds"),
        (_plan(where=Binary("=", Column("region"), Literal(1))), "compares str with num"),
        (_plan(where=Binary("+", Column("region"), Literal("x"))), "needs num"),
        (_plan(where=Column("income")), "WHERE needs bool"),
        (_plan(where=Binary("AND", Column("flag"), Literal(1))), "needs bool"),
        (_plan(where=InList(Column("income"), (Literal("1"),))), "IN compares"),
        (_plan(where=InList(Column("income"), ())), "IN needs"),
        (_plan(where=Between(Column("free"), Literal(1), Literal(2))), "BETWEEN"),
        (_plan(where=Binary(">", Column("income"), Literal(2**70))), "outside int64"),
    ],
)
def test_static_refusals(plan: QueryPlan, match: str) -> None:
    """Plans with unknown/identifier columns, type errors or bad keys are refused before any SQL."""
    with pytest.raises(PlanRejectedError, match=match):
        _compile(plan)


def test_cell_limit_and_depth_limit() -> None:
    """Too many group cells and too deep expressions are refused."""
    with pytest.raises(PlanRejectedError, match="combinations"):
        _compile(_plan(group_by=("region", "flag")), max_cells=3)
    assert "GROUP BY" in _compile(_plan(group_by=("region", "flag")), max_cells=4)
    e: Expr = Column("income")
    for _ in range(70):
        e = Unary("-", e)
    with pytest.raises(PlanRejectedError, match="depth"):
        _compile(_plan(where=Binary(">", e, Literal(0))))


def test_cells_are_the_domain_product_in_order() -> None:
    """The compiled cells list every domain combination in catalog order."""
    c = compile_plan(
        _plan(group_by=("flag", "region")), TABLE, sql_table="t", unit="pid", max_cells=10
    )
    assert c.cells == ((False, "a"), (False, "b"), (True, "a"), (True, "b"))
    assert compile_plan(_plan(), TABLE, sql_table="t", unit="pid", max_cells=1).cells == ((),)


def test_key_without_domain_compiles_for_partition_selection() -> None:
    """A key without a public domain (issue-join): no cells are enumerated; the engine releases only the
    keys OpenDP's threshold mechanism selects, on the plan's own COUNT(*) (no extra column)."""
    plan = _plan(group_by=("free",))
    assert plan.partition_selection and plan.aggregates[0].kind is AggregateKind.COUNT
    compiled = compile_plan(plan, TABLE, sql_table="d__people", unit="pid", max_cells=1000)
    assert compiled.cells == ()
    assert compiled.components[0] == (0, "count") and (-1, "select") not in compiled.components
    assert 'GROUP BY "free"' in compiled.sql


def test_key_without_domain_and_without_a_count_adds_a_row_count() -> None:
    """A plan with no count (SUM alone) selects keys separately: the per-key row count is computed."""
    plan = _plan(agg(AggregateKind.SUM, "income"), group_by=("free",))
    compiled = compile_plan(plan, TABLE, sql_table="d__people", unit="pid", max_cells=1000)
    assert compiled.components == ((-1, "select"), (0, "sum"))


@pytest.mark.parametrize(
    ("ref", "accepted"),
    [
        ('"d__people"', True),
        ('pgw_store.main."d__people"', True),
        ('"pgw_store"."main"."d__people"', True),
        ('pgw_store.main."other"', False),  # not a loaded table
        ('memory.main."d__people"', False),  # the default database
        ('pgw_store.other."d__people"', False),  # another schema
        ('pgw_store."d__people"', False),  # schema pgw_store: not how table_ref names it
        ('system.main."d__people"', False),
        ('temp.main."d__people"', False),
    ],
)
def test_guards_accept_a_loaded_table_bare_or_in_the_store_only(ref: str, accepted: bool) -> None:
    """Both SQL guards (plans and models) take a table of the loaded set either bare or qualified exactly as
    `sandbox.engine.storage.table_ref` writes it; any other catalog or schema is refused. Parsing only: no table
    needs to exist."""
    con = duckdb.connect()
    for check in (check_select, check_model_select):
        sql = f"SELECT count(*) FROM {ref}"
        if accepted:
            check(con, sql, frozenset({"d__people"}))
        else:
            with pytest.raises(PlanRejectedError):
                check(con, sql, frozenset({"d__people"}))


def test_stored_plans_name_the_store_and_pass_the_guard() -> None:
    """With `stored=True` the compiled SQL reads `pgw_store.main."<table>"` and the guard accepts it."""
    compiled = compile_plan(_plan(), TABLE, sql_table="d__people", unit="pid", max_cells=10, stored=True)
    assert ' FROM pgw_store.main."d__people"' in compiled.sql
    check_select(duckdb.connect(), compiled.sql, {"d__people"})
