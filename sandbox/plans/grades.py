"""Column grades: what each grade allows a query or a model to do with a column, checked on every plan.

The data owner's catalog says per grade which uses are allowed (`[grades.internal] allows = [...]`):
`group_key`, `filter` and `aggregate_input`. `check_plan_grades` walks the whole plan -- the top level,
every FROM tree, semi-join and per-unit subquery -- and checks every column it reads against its grade.
The gateway calls it to refuse cleanly (`GRADE_NOT_ALLOWED`); the sandbox calls the same function in
`Engine.execute` before touching data, so a gateway whose analyzer disagrees gets nothing. Both depend
only on the plan, the public catalog and the rules.

Which use each position counts as:

* top level: a column in a GROUP BY key expression is `group_key`; in WHERE, `filter`; in an
  aggregate's argument, `aggregate_input`.
* semi-join (`InUnits`: `unit IN (SELECT unit FROM ... WHERE w)`, correlated EXISTS): its FROM tree
  is checked like any other, and every column of `w` is `filter`, plus the use of the position the
  semi-join sits in when that is not a filter (a semi-join inside a GROUP BY key groups by `w`).
* per-unit subquery or CTE (`UnitAggregate`: `SELECT unit, agg(c) ... WHERE w GROUP BY unit`): the
  column of each per-unit aggregate is `aggregate_input`, every column of `w` is `filter`.
* derived columns (the outputs of a per-unit subquery) carry their lineage: a use of `t.total` with
  `total = SUM(c)` is the same use of `c` (a filter `t.total > 300` filters on c), and also a use of the
  derived column itself under the grade `sandbox.plans.relation.derived_column` gives it.
* public lookup join (`PublicJoin`: `ON r.region = g.code`): the private join column is a `filter` use
  (an inner join drops the rows without a match; either kind compares the column to public values).
  Every column of the lookup table is a function of that column, so a use of `g.macro_region` is the
  same use of `r.region` as well as a use of `g.macro_region` under its own grade (grouping by
  macro_region is grouping by a function of region).
* the privacy unit where the engine implies it -- a unit join's key (`UnitJoin`), a per-unit subquery's
  GROUP BY, a semi-join's select list, COUNT(DISTINCT unit) -- is no column use: joining and grouping on
  the unit is what bounds each unit's contribution. Written explicitly anywhere else it is an ordinary
  column of its grade (`identifier`, which allows nothing).
* HAVING and ORDER BY are post-processing of released values in the gateway (`gateway.products.query.sql.analyze`):
  they read outputs, and an aggregate written there (`HAVING SUM(c) > 0`) becomes an aggregate of the
  plan, so it is checked as `aggregate_input` like one in the select list.

A refusal names the column by its catalog name (`table.column`, or `alias.output` for a derived column),
its grade and the use, so the same misuse reads the same at the top level and nested; when a use reaches
several columns, the deepest (the private column behind a derived or lookup column) is checked first.

Models (`check_model_grades`): a numeric or bool feature and the label are `aggregate_input` (the model's
sufficient statistics are sums over them); a string feature one-hot encoded over its public domain is
`aggregate_input` and `group_key`, because it publishes one coefficient per domain value.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec

from sandbox.errors import PlanRejectedError
from sandbox.plans.relation import derived_column, key, plan_relation, source_relation
from sandbox.protocol.catalog import DatasetInfo, TableInfo
from sandbox.protocol.plan import (
    Column,
    InUnits,
    PublicJoin,
    QueryPlan,
    Source,
    TableSource,
    UnitAggregate,
    UnitJoin,
)

__all__ = [
    "DEFAULT_GRADE_RULES",
    "USES",
    "GradeError",
    "check_model_grades",
    "check_plan_grades",
    "model_column_uses",
]

USES = ("group_key", "filter", "aggregate_input")
# Without a [grades] table: what the analyzer enforced before grades were configurable.
DEFAULT_GRADE_RULES: Mapping[str, frozenset[str]] = {
    "public": frozenset(USES),
    "internal": frozenset(USES),
    "sensitive": frozenset(USES),
    "identifier": frozenset(),
}


class GradeError(PlanRejectedError):
    """A column used in a way its grade does not allow (decided from the plan and the catalog only)."""

    def __init__(self, column: str, grade: str, use: str) -> None:
        super().__init__(f"column {column!r} of grade {grade!r} may not be used as {use}")
        self.column = column
        self.grade = grade
        self.use = use


@dataclass(frozen=True, slots=True)
class _Origin:
    """A column whose grade governs a use: its catalog name (for refusals) and grade."""

    column: str
    grade: str


# Relation key ("col" or "alias.col") -> the columns whose grades a use of it must satisfy, deepest first.
_Scope = Mapping[str, tuple[_Origin, ...]]


class _Checker:
    def __init__(self, dataset: DatasetInfo, rules: Mapping[str, frozenset[str]]) -> None:
        self.dataset = dataset
        self.rules = rules

    def allow(self, origin: _Origin, use: str) -> None:
        if use not in self.rules.get(origin.grade, frozenset()):
            raise GradeError(origin.column, origin.grade, use)

    def origins(self, col: Column, scope: _Scope) -> tuple[_Origin, ...]:
        found = scope.get(key(col))
        if found is None:
            raise PlanRejectedError(f"unknown column {key(col)!r}")
        return found

    def expr(self, e: object, use: str, scope: _Scope) -> None:
        """Check every column of an expression tree (any node type, by its fields) as `use`."""
        if isinstance(e, Column):
            for origin in self.origins(e, scope):
                self.allow(origin, use)
            return
        if isinstance(e, InUnits):
            inner = self.source(e.source)
            if e.where is not None:
                self.expr(e.where, "filter", inner)
                if use != "filter":
                    self.expr(e.where, use, inner)
            return
        if isinstance(e, tuple | list):
            for item in e:
                self.expr(item, use, scope)
            return
        if isinstance(e, msgspec.Struct):  # every plan node is a Struct (sandbox.protocol.plan)
            for name in e.__struct_fields__:
                self.expr(getattr(e, name), use, scope)
        elif dataclasses.is_dataclass(e) and not isinstance(e, type):
            for f in dataclasses.fields(e):
                self.expr(getattr(e, f.name), use, scope)

    def table(self, name: str, alias: str | None) -> dict[str, tuple[_Origin, ...]]:
        t = self.dataset.table(name)
        if t is None:
            raise PlanRejectedError(f"unknown table {name!r}")
        prefix = "" if alias is None else f"{alias}."
        return {f"{prefix}{c.name}": (_Origin(f"{t.name}.{c.name}", c.grade),) for c in t.columns}

    def source(self, s: Source) -> dict[str, tuple[_Origin, ...]]:
        """The lineage of a FROM tree's columns; checks the uses inside it (lookup keys, per-unit
        aggregates and their WHERE) on the way."""
        match s:
            case TableSource(name, alias):
                return self.table(name, alias)
            case UnitJoin(left, right, _):
                return self.source(left) | self.source(right)
            case PublicJoin(left, right, left_key, _, _):
                lscope = self.source(left)
                self.expr(left_key, "filter", lscope)
                through: tuple[_Origin, ...] = ()
                if isinstance(left_key, Column):
                    through = self.origins(left_key, lscope)
                looked_up = self.source(right)
                return lscope | {k: (*through, *own) for k, own in looked_up.items()}
            case UnitAggregate(inp, where, outputs, alias):
                inner = self.source(inp)
                if where is not None:
                    self.expr(where, "filter", inner)
                inner_rel = source_relation(inp, self.dataset)  # for the derived columns' own grades
                out: dict[str, tuple[_Origin, ...]] = {}
                unit_name = f"{alias}.{self.dataset.privacy_unit}"
                unit = inner_rel.column(inner_rel.unit)
                assert unit is not None
                out[unit_name] = (*inner.get(inner_rel.unit, ()), _Origin(unit_name, unit.grade))
                for o in outputs:
                    name = f"{alias}.{o.name}"
                    own = _Origin(name, derived_column(o.name, o.kind, o.column, inner_rel).grade)
                    if o.column is None:
                        out[name] = (own,)
                        continue
                    self.expr(o.column, "aggregate_input", inner)
                    out[name] = (*self.origins(o.column, inner), own)
                return out
        raise PlanRejectedError("malformed source")  # pragma: no cover


def check_plan_grades(
    plan: QueryPlan, dataset: DatasetInfo, rules: Mapping[str, frozenset[str]] = DEFAULT_GRADE_RULES
) -> None:
    """Refuse a plan that uses any column, at any depth, in a way its grade does not allow.

    Checked in this order: the FROM tree (lookup join keys, per-unit subqueries), GROUP BY keys, WHERE
    (with its semi-joins), aggregate arguments. The positions and their uses are in the module docstring.

    Raises:
        GradeError: names the column, its grade and the use.
        PlanRejectedError: the plan names an unknown table or column, or its FROM tree is malformed.
    """
    plan_relation(plan, dataset)  # the shape checks (unknown or public tables, aliases) come first
    checker = _Checker(dataset, rules)
    scope = checker.table(plan.table, None) if plan.source is None else checker.source(plan.source)
    for g in plan.group_by:
        checker.expr(g.expr, "group_key", scope)
    if plan.where is not None:
        checker.expr(plan.where, "filter", scope)
    for a in plan.aggregates:
        if a.arg is not None:
            checker.expr(a.arg, "aggregate_input", scope)


def model_column_uses(table: TableInfo, features: Sequence[str], label: str) -> list[tuple[str, str]]:
    """(column, use) for every column a model over `table` reads, in request order (label last).

    A string feature is one-hot encoded over its public domain: one coefficient per value, so it is a
    `group_key` use as well as an `aggregate_input` one. Unknown columns are skipped (the model's design
    refuses them with its own reason).
    """
    uses: list[tuple[str, str]] = []
    for name in features:
        col = table.column(name)
        if col is None:
            continue
        uses.append((name, "aggregate_input"))
        if col.type == "string":
            uses.append((name, "group_key"))
    if table.column(label) is not None:
        uses.append((label, "aggregate_input"))
    return uses


def check_model_grades(
    table: TableInfo, features: Sequence[str], label: str,
    rules: Mapping[str, frozenset[str]] = DEFAULT_GRADE_RULES,
) -> None:
    """Refuse a model whose features or label use a column in a way its grade does not allow.

    Called by the gateway (`gateway.products.models.service`) and by the sandbox (`sandbox.products.models`, before
    touching data)
    with the same arguments; the mapping of features and label to uses is `model_column_uses`.

    Raises:
        GradeError: names the column (`table.column`), its grade and the use.
    """
    for name, use in model_column_uses(table, features, label):
        col = table.column(name)
        assert col is not None
        if use not in rules.get(col.grade, frozenset()):
            raise GradeError(f"{table.name}.{name}", col.grade, use)
