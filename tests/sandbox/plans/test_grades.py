"""`sandbox.plans.grades` on hand-built plans: the positions the analyzer cannot produce, lineage, the unit's
implied positions, and the model mapping."""

from __future__ import annotations

import pytest

from sandbox.errors import PlanRejectedError
from sandbox.plans.grades import (
    DEFAULT_GRADE_RULES,
    GradeError,
    check_model_grades,
    check_plan_grades,
    model_column_uses,
)
from sandbox.plans.relation import leftmost_table
from sandbox.protocol.messages import (
    Aggregate,
    AggregateKind,
    Binary,
    Case,
    Column,
    ColumnInfo,
    DatasetInfo,
    GroupKey,
    InUnits,
    Literal,
    PublicJoin,
    QueryPlan,
    TableInfo,
    TableSource,
    UnitAggregate,
    UnitJoin,
    UnitOutput,
)

A = TableInfo("a", (
    ColumnInfo("pid", "int64", "identifier"),
    ColumnInfo("x", "int64", "sensitive", lower=0, upper=10),
    ColumnInfo("s", "string", "sensitive", domain=("u", "v")),
    ColumnInfo("flag", "bool", "public", domain=(False, True)),
    ColumnInfo("t", "string", "internal", domain=("p", "q")),
), 2)
B = TableInfo("b", (
    ColumnInfo("pid", "int64", "identifier"),
    ColumnInfo("y", "int64", "internal", lower=0, upper=100),
), 3)
LOOKUP = TableInfo("lk", (
    ColumnInfo("code", "string", "public"),
    ColumnInfo("grp", "string", "public", domain=("g1", "g2")),
), 0, public=True, unique_key="code")
DS = DatasetInfo("d", "pid", (A, B, LOOKUP), "v1")
RULES = {"public": frozenset({"group_key", "filter", "aggregate_input"}),
         "internal": frozenset({"filter"}), "sensitive": frozenset({"aggregate_input"}),
         "identifier": frozenset()}
COUNT = (Aggregate(AggregateKind.COUNT),)


def _plan(source: object, **kw: object) -> QueryPlan:
    assert isinstance(source, TableSource | UnitJoin | PublicJoin | UnitAggregate)
    aggregates = kw.pop("aggregates", COUNT)
    return QueryPlan("d", leftmost_table(source), aggregates, (), source=source, **kw)  # type: ignore[arg-type]


def _refused(plan: QueryPlan) -> tuple[str, str, str]:
    with pytest.raises(GradeError) as info:
        check_plan_grades(plan, DS, RULES)
    e = info.value
    assert str(e) == f"column {e.column!r} of grade {e.grade!r} may not be used as {e.use}"
    return e.column, e.grade, e.use


def test_a_semi_join_inside_a_group_key_is_a_group_key_use_of_its_where() -> None:
    """`CASE WHEN pid IN (SELECT pid FROM b WHERE y > 3) ...` as a key groups by y: filter is allowed for
    y's grade, group_key is not."""
    semi = InUnits(TableSource("b", "bb"), Binary(">", Column("y", "bb"), Literal(3)))
    key = GroupKey("k", Case(((semi, Literal(1)),), Literal(0)), (0, 1))
    assert _refused(_plan(TableSource("a", "aa"), group_by=(key,))) == ("b.y", "internal", "group_key")
    check_plan_grades(_plan(TableSource("a", "aa"), where=semi), DS, RULES)  # as a filter: allowed


@pytest.mark.parametrize("kind", ["inner", "left"])
def test_a_lookup_join_key_is_a_filter_use(kind: str) -> None:
    join = PublicJoin(TableSource("a", "aa"), TableSource("lk", "g"), Column("s", "aa"), "code", kind)
    assert _refused(_plan(join)) == ("a.s", "sensitive", "filter")
    ok = PublicJoin(TableSource("a", "aa"), TableSource("lk", "g"), Column("t", "aa"), "code", kind)
    check_plan_grades(_plan(ok), DS, RULES)


def test_lookup_columns_carry_the_join_column() -> None:
    """g.grp is public, but grouping by it groups by a function of a.t (internal: filter only)."""
    join = PublicJoin(TableSource("a", "aa"), TableSource("lk", "g"), Column("t", "aa"), "code")
    key = GroupKey("grp", Column("grp", "g"), ("g1", "g2"))
    assert _refused(_plan(join, group_by=(key,))) == ("a.t", "internal", "group_key")
    check_plan_grades(_plan(join, group_by=(key,)), DS, {**RULES, "internal": frozenset(
        {"filter", "group_key"})})


def test_per_unit_outputs_carry_their_column_and_their_own_grade() -> None:
    inner = UnitAggregate(TableSource("b", "bb"), None, (
        UnitOutput("total", "sum", Column("y", "bb")), UnitOutput("n", "count_star")), "u")
    # SUM(y) per unit: y is internal (no aggregate_input)
    assert _refused(_plan(inner)) == ("b.y", "internal", "aggregate_input")
    only_count = UnitAggregate(TableSource("b", "bb"), None, (UnitOutput("n", "count_star"),), "u")
    check_plan_grades(_plan(only_count), DS, RULES)
    # COUNT(*) per unit has no column: grouping by it checks only its own (derived, sensitive) grade
    key = GroupKey("n", Column("n", "u"), tuple(range(4)))
    assert _refused(_plan(only_count, group_by=(key,))) == ("u.n", "sensitive", "group_key")
    check_plan_grades(_plan(only_count, group_by=(key,)), DS, DEFAULT_GRADE_RULES)
    # MAX(x) per unit, filtered outside: a filter on x (sensitive: aggregate_input only)
    top = UnitAggregate(TableSource("a", "aa"), None, (UnitOutput("top", "max", Column("x", "aa")),), "m")
    assert _refused(_plan(top, where=Binary(">", Column("top", "m"), Literal(3)))) == (
        "a.x", "sensitive", "filter")
    # the inner WHERE is a filter
    where = UnitAggregate(TableSource("a", "aa"), Binary("=", Column("s", "aa"), Literal("u")),
                          (UnitOutput("n", "count_star"),), "w")
    assert _refused(_plan(where)) == ("a.s", "sensitive", "filter")


def test_the_units_implied_positions_are_no_column_use() -> None:
    """Unit joins, per-unit GROUP BY, semi-joins and COUNT(DISTINCT unit) read the identifier pid
    implicitly: allowed. Written as a column it is an identifier use, refused."""
    join = UnitJoin(TableSource("a", "aa"), TableSource("b", "bb"))
    per_unit = UnitAggregate(join, None, (UnitOutput("n", "count_star"),), "u")
    semi = InUnits(TableSource("b", "bb"))
    plan = _plan(per_unit, where=semi, aggregates=(Aggregate(AggregateKind.COUNT_DISTINCT_UNIT),))
    check_plan_grades(plan, DS, RULES)
    assert _refused(_plan(join, where=Binary(">", Column("pid", "bb"), Literal(3)))) == (
        "b.pid", "identifier", "filter")
    assert _refused(_plan(per_unit, where=Binary(">", Column("pid", "u"), Literal(3))))[1:] == (
        "identifier", "filter")


def test_unknown_columns_are_refused_but_are_not_grade_errors() -> None:
    plan = _plan(TableSource("a", "aa"), where=Binary(">", Column("nope", "aa"), Literal(3)))
    with pytest.raises(PlanRejectedError) as info:
        check_plan_grades(plan, DS, RULES)
    assert not isinstance(info.value, GradeError) and "unknown column" in str(info.value)


def test_without_a_source_columns_are_named_by_table() -> None:
    plan = QueryPlan("d", "a", (Aggregate(AggregateKind.SUM, Column("x"), 1.0, 0.0, 10.0),), (),
                     where=Binary(">", Column("x"), Literal(3)))
    with pytest.raises(GradeError) as info:
        check_plan_grades(plan, DS, RULES)
    assert str(info.value) == "column 'a.x' of grade 'sensitive' may not be used as filter"


def test_model_uses() -> None:
    """Numeric and bool features and the label are aggregate_input; a one-hot string feature is also a
    group key (one coefficient per domain value); unknown columns are left to the model's design."""
    assert model_column_uses(A, ["x", "s", "flag", "missing"], "t") == [
        ("x", "aggregate_input"), ("s", "aggregate_input"), ("s", "group_key"),
        ("flag", "aggregate_input"), ("t", "aggregate_input")]
    with pytest.raises(GradeError) as info:
        check_model_grades(A, ["x", "s"], "flag", RULES)  # s is sensitive: no group key
    assert (info.value.column, info.value.use) == ("a.s", "group_key")
    with pytest.raises(GradeError) as info:
        check_model_grades(A, ["x"], "t", RULES)  # t is internal: filter only
    assert (info.value.column, info.value.use) == ("a.t", "aggregate_input")
    check_model_grades(A, ["x", "flag"], "x", RULES)
    check_model_grades(A, ["x", "s", "flag"], "t", DEFAULT_GRADE_RULES)
