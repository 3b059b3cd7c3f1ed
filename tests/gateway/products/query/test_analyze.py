"""Precise checks of the plans `gateway.products.query.sql.analyze` builds, and of its refusals."""

from __future__ import annotations

import threading

import pytest

from gateway.errors import InvalidQueryError
from gateway.products.query.sql.analyze import analyze, analyze_query
from gateway.products.query.sql.parse import MAX_SQL_CHARS, aggregate_function_names, parse_select
from sandbox.protocol.messages import (
    Aggregate,
    AggregateKind,
    Between,
    Binary,
    Column,
    ColumnInfo,
    DatasetInfo,
    Expr,
    InList,
    IsNull,
    Literal,
    OutputColumn,
    QueryPlan,
    TableInfo,
    Unary,
    plan_from_json,
    plan_to_json,
)
from tests.helpers import make_agg

REGIONS = tuple(f"{code}0000" for code in (
    11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41,
    42, 43, 44, 45, 46, 50, 51, 52, 53, 54, 61, 62, 63, 64, 65,
))  # fmt: skip
MONTHS = tuple(f"2025-{m:02d}" for m in range(1, 13))

RESIDENTS = TableInfo(
    "residents",
    (
        ColumnInfo("person_id", "int64", "identifier"),
        ColumnInfo("id_number", "string", "identifier"),
        ColumnInfo("name", "string", "identifier"),
        ColumnInfo("birth_year", "int64", "public", lower=1930, upper=2007),
        ColumnInfo("sex", "string", "public", domain=("F", "M")),
        ColumnInfo("region", "string", "internal", domain=REGIONS),
        ColumnInfo("income", "int64", "sensitive", lower=0, upper=2_000_000),
        ColumnInfo("employed", "bool", "internal", domain=(False, True)),
    ),
    max_rows_per_unit=1,
)
SOCIAL = TableInfo(
    "social_insurance",
    (
        ColumnInfo("person_id", "int64", "identifier"),
        ColumnInfo("month", "string", "public", domain=MONTHS),
        ColumnInfo("contribution", "int64", "sensitive", lower=0, upper=10_000),
        ColumnInfo("employer_credit_code", "string", "identifier"),
        ColumnInfo("region", "string", "internal", domain=REGIONS),
    ),
    max_rows_per_unit=12,
)
REGISTRY = DatasetInfo("registry", "person_id", (RESIDENTS, SOCIAL), version="test")


def plan(sql: str, dataset: DatasetInfo = REGISTRY) -> QueryPlan:
    result = analyze(sql, dataset)
    # every plan must survive the strict wire codec unchanged
    assert plan_from_json(plan_to_json(result)) == result
    return result


def _keys(p: QueryPlan) -> tuple[str, ...]:
    return tuple(g.name for g in p.group_by)


def where(condition: str) -> Expr | None:
    return plan(f"SELECT COUNT(*) FROM residents WHERE {condition}").where


def refused(sql: str, dataset: DatasetInfo = REGISTRY) -> InvalidQueryError:
    with pytest.raises(InvalidQueryError) as info:
        analyze(sql, dataset)
    return info.value


INCOME = Column("income")
SEX = Column("sex")

# --- plans ------------------------------------------------------------------------------------


def test_count_star_plan() -> None:
    assert plan("SELECT COUNT(*) FROM residents") == QueryPlan(
        dataset="registry",
        table="residents",
        aggregates=(Aggregate(AggregateKind.COUNT, None, 1.0),),
        outputs=(OutputColumn("count", aggregate_index=0),),
        where=None,
        group_by=(),
    )


@pytest.mark.parametrize(
    ("call", "kind", "column", "name"),
    [
        ("COUNT(*)", AggregateKind.COUNT, None, "count"),
        ("count()", AggregateKind.COUNT, None, "count"),
        ("COUNT(income)", AggregateKind.COUNT_COLUMN, "income", "count_income"),
        ("COUNT(sex)", AggregateKind.COUNT_COLUMN, "sex", "count_sex"),
        ("SUM(income)", AggregateKind.SUM, "income", "sum_income"),
        ("sum(birth_year)", AggregateKind.SUM, "birth_year", "sum_birth_year"),
        ("AVG(income)", AggregateKind.AVG, "income", "avg_income"),
        ("mean(income)", AggregateKind.AVG, "income", "avg_income"),
        ('"SUM"(INCOME)', AggregateKind.SUM, "income", "sum_income"),
    ],
)
def test_aggregate_kind_mapping_and_default_names(
    call: str, kind: AggregateKind, column: str | None, name: str
) -> None:
    p = plan(f"SELECT {call} FROM residents")
    assert p.aggregates == (make_agg(RESIDENTS, kind, column),)
    assert p.outputs == (OutputColumn(name, aggregate_index=0),)


def test_grouped_plan_with_aliases() -> None:
    p = plan(
        "SELECT sex, COUNT(*) AS n, AVG(income), SUM(income) total "
        "FROM residents WHERE birth_year >= 1960 GROUP BY sex"
    )
    assert _keys(p) == ("sex",)
    assert p.aggregates == (
        Aggregate(AggregateKind.COUNT, None, 1.0),
        make_agg(RESIDENTS, AggregateKind.AVG, "income"),
        make_agg(RESIDENTS, AggregateKind.SUM, "income"),
    )
    assert p.outputs == (
        OutputColumn("sex", group_index=0),
        OutputColumn("n", aggregate_index=0),
        OutputColumn("avg_income", aggregate_index=1),
        OutputColumn("total", aggregate_index=2),
    )
    assert p.where == Binary(">=", Column("birth_year"), Literal(1960))
    assert all(a.weight == 1.0 for a in p.aggregates)


def test_group_keys_in_query_order_and_not_necessarily_selected() -> None:
    p = plan("SELECT COUNT(*) FROM residents GROUP BY region, sex, employed")
    assert _keys(p) == ("region", "sex", "employed")
    assert p.outputs == (OutputColumn("count", aggregate_index=0),)


def test_group_key_alias_and_repeats() -> None:
    p = plan("SELECT COUNT(*) c, sex AS gender, sex FROM residents GROUP BY sex, sex")
    assert _keys(p) == ("sex",)
    assert p.outputs == (
        OutputColumn("c", aggregate_index=0),
        OutputColumn("gender", group_index=0),
        OutputColumn("sex", group_index=0),
    )


def test_identical_aggregates_share_one_release() -> None:
    p = plan("SELECT COUNT(*) AS a, COUNT(*) AS b, AVG(income) x, mean(income) y FROM residents")
    assert p.aggregates == (
        Aggregate(AggregateKind.COUNT, None, 1.0),
        make_agg(RESIDENTS, AggregateKind.AVG, "income"),
    )
    assert [o.aggregate_index for o in p.outputs] == [0, 0, 1, 1]


def test_names_are_case_insensitive_and_canonical() -> None:
    p = plan('SELECT SEX, SUM("Income") FROM "RESIDENTS" R WHERE r.BIRTH_YEAR > 1 GROUP BY r.sex')
    assert p.table == "residents"
    assert _keys(p) == ("sex",)
    assert p.aggregates == (make_agg(RESIDENTS, AggregateKind.SUM, "income"),)
    assert p.outputs[0] == OutputColumn("sex", group_index=0)
    assert p.outputs[1].name == "sum_income"
    assert p.where == Binary(">", Column("birth_year"), Literal(1))


def test_table_qualified_columns() -> None:
    p = plan("SELECT residents.sex, COUNT(residents.income) FROM residents GROUP BY residents.sex")
    assert p.aggregates == (make_agg(RESIDENTS, AggregateKind.COUNT_COLUMN, "income"),)


def test_second_table() -> None:
    p = plan("SELECT month, SUM(contribution) FROM social_insurance GROUP BY month")
    assert (p.table, _keys(p)) == ("social_insurance", ("month",))


# --- WHERE shapes ---------------------------------------------------------------------------


def test_bang_equal_maps_to_sql_not_equal() -> None:
    assert where("sex != 'F'") == Binary("<>", SEX, Literal("F"))
    assert where("sex <> 'F'") == Binary("<>", SEX, Literal("F"))


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("income = 5", Binary("=", INCOME, Literal(5))),
        ("income < 5", Binary("<", INCOME, Literal(5))),
        ("income <= 5", Binary("<=", INCOME, Literal(5))),
        ("income > 5", Binary(">", INCOME, Literal(5))),
        ("income >= 5", Binary(">=", INCOME, Literal(5))),
        ("5 < income", Binary("<", Literal(5), INCOME)),
        ("income > -5", Binary(">", INCOME, Literal(-5))),
        ("income > - 5", Binary(">", INCOME, Literal(-5))),
        ("income > 1234.5", Binary(">", INCOME, Literal(1234.5))),
        ("income > 1e5", Binary(">", INCOME, Literal(100000.0))),
        ("income > 1_000", Binary(">", INCOME, Literal(1000))),
        ("income = NULL", Binary("=", INCOME, Literal(None))),
        ("employed = TRUE", Binary("=", Column("employed"), Literal(True))),
        ("employed", Column("employed")),
        ("NOT employed", Unary("NOT", Column("employed"))),
        ("NOT (sex = 'F')", Unary("NOT", Binary("=", SEX, Literal("F")))),
        ("-income < -100", Binary("<", Unary("-", INCOME), Literal(-100))),
        ("sex = 'O''Brien'", Binary("=", SEX, Literal("O'Brien"))),
        ("income IS NULL", IsNull(INCOME)),
        ("income IS NOT NULL", IsNull(INCOME, negated=True)),
        ("sex IN ('F', 'M')", InList(SEX, (Literal("F"), Literal("M")))),
        ("sex NOT IN ('F')", InList(SEX, (Literal("F"),), negated=True)),
        ("NOT (sex IN ('F'))", InList(SEX, (Literal("F"),), negated=True)),
        ("sex IN ('F', NULL)", InList(SEX, (Literal("F"), Literal(None)))),
        ("income BETWEEN 1 AND 2", Between(INCOME, Literal(1), Literal(2))),
        ("income NOT BETWEEN 1 AND 2", Between(INCOME, Literal(1), Literal(2), negated=True)),
        (
            "income * 12 + 5 > 100000",
            Binary(">", Binary("+", Binary("*", INCOME, Literal(12)), Literal(5)), Literal(100000)),
        ),
        (
            "(income - 1) / 2 % 3 = 0",
            Binary(
                "=",
                Binary("%", Binary("/", Binary("-", INCOME, Literal(1)), Literal(2)), Literal(3)),
                Literal(0),
            ),
        ),
        (
            "sex = 'F' OR income > 1 AND employed",
            Binary(
                "OR",
                Binary("=", SEX, Literal("F")),
                Binary("AND", Binary(">", INCOME, Literal(1)), Column("employed")),
            ),
        ),
        ("((sex = 'F'))", Binary("=", SEX, Literal("F"))),
        ("income > birth_year", Binary(">", INCOME, Column("birth_year"))),
    ],
)
def test_where_shapes(condition: str, expected: Expr) -> None:
    assert where(condition) == expected


def test_and_chain_becomes_balanced_tree() -> None:
    a, b, c = (Binary(">", INCOME, Literal(i)) for i in (1, 2, 3))
    assert where("income > 1 AND income > 2 AND income > 3") == Binary(
        "AND", a, Binary("AND", b, c)
    )

    def depth(e: Expr) -> int:
        if isinstance(e, Binary):
            return 1 + max(depth(e.left), depth(e.right))
        return 1

    long_chain = where(" AND ".join(f"income <> {i}" for i in range(500)))
    assert long_chain is not None
    assert depth(long_chain) == 11  # 9 AND levels (ceil(log2(500))) + comparison + operand


def test_depth_limit_boundary() -> None:
    assert where("NOT " * 31 + "employed") is not None  # 32 plan levels
    assert (
        refused("SELECT COUNT(*) FROM residents WHERE " + "NOT " * 32 + "employed").reason
        == "QUERY_TOO_COMPLEX"
    )


def test_in_list_and_literal_limits() -> None:
    values = ", ".join(str(i) for i in range(1000))
    assert isinstance(where(f"birth_year IN ({values})"), InList)
    assert (
        refused(f"SELECT COUNT(*) FROM residents WHERE birth_year IN ({values}, 1000)").reason
        == "QUERY_TOO_LARGE"
    )
    assert where("sex = '" + "x" * 1000 + "'") is not None
    err = refused("SELECT COUNT(*) FROM residents WHERE sex = '" + "x" * 1001 + "'")
    assert (err.reason, err.metadata) == ("QUERY_TOO_LARGE", {"limit": "1000"})


def test_query_size_boundary() -> None:
    base = "SELECT COUNT(*) FROM residents"
    assert plan(base + " " * (MAX_SQL_CHARS - len(base))).aggregates
    assert refused(base + " " * (MAX_SQL_CHARS - len(base) + 1)).reason == "QUERY_TOO_LARGE"


# --- refusals ---------------------------------------------------------------------------------


def test_exact_messages() -> None:
    err = refused("SELECT * FROM residents")
    assert (err.reason, err.message) == (
        "SELECT_STAR",
        "SELECT * would release rows; ask for aggregates such as COUNT(*)",
    )
    err = refused("SELECT COUNT(*) FROM residents WHERE id_number = 'x'")
    assert err.reason == "IDENTIFIER_COLUMN"
    assert (
        err.message == "column id_number is an identifier and never appears in queries or answers"
    )
    assert err.metadata == {"column": "id_number"}
    err = refused("SELECT COUNT(*) FROM residents GROUP BY name")
    assert err.reason == "IDENTIFIER_COLUMN"
    err = refused("COPY residents TO 'x.csv'")
    assert (err.reason, err.message) == (
        "NOT_A_SELECT",
        "only SELECT queries are allowed; got COPY",
    )
    err = refused("SELECT COUNT(*) FROM residents r JOIN social_insurance s USING (region)")
    assert err.reason == "JOIN_NOT_ON_PRIVACY_UNIT"


@pytest.mark.parametrize(
    "name", ["people", "'/etc/passwd'", "'/srv/data/registry.duckdb'", "secret_table", '"x y"']
)
def test_unknown_tables_look_alike(name: str) -> None:
    err = refused(f"SELECT COUNT(*) FROM {name}")
    assert (err.reason, err.message, err.metadata) == ("UNKNOWN_TABLE", "unknown table", {})


def test_too_many_groups_by_domain_product() -> None:
    wide = TableInfo(
        "wide",
        tuple(ColumnInfo(c, "int64", "public", domain=tuple(range(100))) for c in ("a", "b", "c")),
        max_rows_per_unit=1,
    )
    ds = DatasetInfo("d", "pid", (wide,), version="v")
    assert _keys(plan("SELECT COUNT(*) FROM wide GROUP BY a, b", ds)) == ("a", "b")
    err = refused("SELECT COUNT(*) FROM wide GROUP BY a, b, c", ds)
    assert (err.reason, err.metadata) == ("TOO_MANY_GROUPS", {"limit": "100000"})


def test_sum_needs_declared_bounds() -> None:
    table = TableInfo(
        "t",
        (
            ColumnInfo("x", "float64", "sensitive"),
            ColumnInfo("y", "float64", "sensitive", lower=0.0, upper=1.0),
        ),
        max_rows_per_unit=1,
    )
    ds = DatasetInfo("d", "pid", (table,), version="v")
    assert refused("SELECT SUM(x) FROM t", ds).reason == "UNBOUNDED_COLUMN"
    assert refused("SELECT AVG(x) FROM t", ds).reason == "UNBOUNDED_COLUMN"
    assert plan("SELECT COUNT(x), AVG(y) FROM t", ds).aggregates[1] == make_agg(
        table, AggregateKind.AVG, "y"
    )


@pytest.mark.parametrize(
    ("sql", "reason"),
    [
        ("SELECT COUNT(*) FROM residents\x00; DROP TABLE residents", "SQL_PARSE_FAILED"),
        ("", "SQL_PARSE_FAILED"),
        ("SELECT COUNT(*) FROM residents; SELECT 1", "MULTIPLE_STATEMENTS"),
        ("SUMMARIZE residents", "UNSUPPORTED_CONSTRUCT"),
        ("SELECT COUNT(*) FROM residents WHERE sex = 1", "TYPE_MISMATCH"),
        ("SELECT COUNT(*) FROM residents WHERE income > 1e999", "INVALID_LITERAL"),
        ("SELECT COUNT(*) FROM residents WHERE income > 9223372036854775808", "INVALID_LITERAL"),
        ('SELECT COUNT(*) AS "a-b" FROM residents', "INVALID_ALIAS"),
        ("SELECT COUNT(*) AS COUNT, SUM(income) AS count FROM residents", "DUPLICATE_OUTPUT_NAME"),
        ("SELECT mode(income) FROM residents", "UNSUPPORTED_AGGREGATE"),
        ("SELECT abs(income) FROM residents", "UNSUPPORTED_EXPRESSION"),
        ("SELECT COUNT(*) FROM residents WHERE random() > 0.5", "UNSUPPORTED_FUNCTION"),
        ("SELECT SUM(income * income * 1e300) FROM residents", "UNBOUNDED_EXPRESSION"),
        ("SELECT sex FROM residents GROUP BY sex", "NO_AGGREGATE"),
        ("SELECT income FROM residents", "BARE_COLUMN"),
        ("SELECT COUNT(*) FROM read_csv('/etc/passwd')", "TABLE_FUNCTION"),
        ("SELECT SUM(nope) FROM residents", "UNKNOWN_COLUMN"),
        ("SELECT COUNT(*) FROM residents WHERE income = $1", "UNSUPPORTED_EXPRESSION"),
    ],
)
def test_reasons(sql: str, reason: str) -> None:
    err = refused(sql)
    assert err.reason == reason
    assert err.message and len(err.message) <= 300


def test_parser_messages_are_short() -> None:
    err = refused("SELECT COUNT(*) FROM residents WHERE (" + "x" * 5000)
    assert err.reason == "SQL_PARSE_FAILED"
    assert len(err.message) <= 260


def test_non_ascii_lookalikes_do_not_match() -> None:
    # U+212A KELVIN SIGN lower-cases to ASCII 'k'; it must not reach a catalog name.
    table = TableInfo("k", (ColumnInfo("k", "int64", "public", 0, 1),), max_rows_per_unit=1)
    ds = DatasetInfo("d", "pid", (table,), version="v")
    assert plan("SELECT SUM(K) FROM K", ds).table == "k"
    assert refused("SELECT SUM(k) FROM \u212a", ds).reason == "UNKNOWN_TABLE"
    assert refused("SELECT SUM(\u212a) FROM k", ds).reason == "UNKNOWN_COLUMN"


# --- parser --------------------------------------------------------------------------------------


def test_parse_select_returns_the_select_node() -> None:
    node = parse_select("SELECT COUNT(*) FROM residents")
    assert node["type"] == "SELECT_NODE"
    assert node["from_table"]["table_name"] == "residents"


def test_aggregate_names_come_from_duckdb() -> None:
    names = aggregate_function_names()
    assert {"count_star", "sum", "avg", "min", "list", "string_agg", "arg_max"} <= names


def test_concurrent_analysis() -> None:
    sql = "SELECT sex, COUNT(*), AVG(income) FROM residents WHERE birth_year > 1980 GROUP BY sex"
    expected = analyze(sql, REGISTRY)
    results: list[QueryPlan] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(50):
                results.append(analyze(sql, REGISTRY))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == [expected] * 400


def test_having_and_order_by_on_a_partition_selection_key() -> None:
    """issue-expr x issue-join: post-processing reads a key without a public domain with its column
    type (string here), and the key stays a partition-selection key (domain None)."""
    from tests.corpus.test_corpus import REGISTRY

    q = analyze_query(
        "SELECT g.name AS province, COUNT(*) AS n FROM residents r JOIN regions g "
        "ON r.region = g.code GROUP BY g.name HAVING province <> 'x' ORDER BY province LIMIT 5",
        REGISTRY,
    )
    assert q.plan.partition_selection and q.plan.group_by[0].domain is None
    assert q.plan.group_by[0].expr == Column("name", "g")
    assert q.post.limit == 5 and q.post.having is not None


def test_lookup_join_keys_of_different_kinds_are_refused_from_the_catalog() -> None:
    """A private column joined to a lookup key of another kind (number vs string) is refused before any
    data is read: TYPE_MISMATCH by the analyzer, and by the sandbox's relation for a plan that reaches it
    anyway (the engine would cast one side and fail on some values only). The catalog cannot refuse it at
    load: any private column may be joined to a lookup. Numbers join numbers (int64 = float64 compares as
    DOUBLE, which cannot fail)."""
    from sandbox.errors import PlanRejectedError
    from sandbox.plans.relation import source_relation
    from sandbox.protocol.messages import PublicJoin, TableSource
    from tests.corpus.test_corpus import REGISTRY

    err = refused("SELECT COUNT(*) FROM residents r JOIN regions g ON r.birth_year = g.code", REGISTRY)
    assert err.reason == "TYPE_MISMATCH"
    join = PublicJoin(TableSource("residents", "r"), TableSource("regions", "g"), Column("birth_year", "r"),
                      "code")
    with pytest.raises(PlanRejectedError, match="different types"):
        source_relation(join, REGISTRY)


def test_the_sandboxs_cell_limit_is_the_analyzers() -> None:
    """A sandbox started with a lower --max-groups announces it (CatalogInfo.max_cells); the analyzer
    compiles every plan against it, so the query is refused before pricing, not by the sandbox after."""
    sql = "SELECT region, COUNT(*) FROM residents GROUP BY region"
    assert analyze_query(sql, REGISTRY, max_cells=len(REGIONS)).plan.group_by
    with pytest.raises(InvalidQueryError) as info:
        analyze_query(sql, REGISTRY, max_cells=len(REGIONS) - 1)
    assert (info.value.reason, info.value.metadata["limit"]) == ("TOO_MANY_GROUPS", str(len(REGIONS) - 1))
