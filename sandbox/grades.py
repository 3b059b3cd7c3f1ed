"""Column grades: what each grade allows a query to do with a column, checked on the plan.

The data owner's catalog says per grade which uses are allowed (`[grades.internal] allows = [...]`):
`group_key` (GROUP BY), `filter` (anywhere in WHERE) and `aggregate_input` (any column inside an aggregate's argument;
every column of a group-key expression is a `group_key` use).
The sandbox checks every plan before touching data (`check_plan_grades`, called by `Engine.execute`), so
a gateway whose analyzer disagrees cannot get a `sensitive` column used as a group key. The check
depends only on the plan and the catalog.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Protocol

from sandbox.errors import PlanRejectedError
from sandbox.protocol import Column, ColumnInfo, InUnits, QueryPlan

__all__ = ["DEFAULT_GRADE_RULES", "USES", "check_plan_grades", "columns_in"]

USES = ("group_key", "filter", "aggregate_input")
# Without a [grades] table: what the analyzer enforced before grades were configurable.
DEFAULT_GRADE_RULES: Mapping[str, frozenset[str]] = {
    "public": frozenset(USES),
    "internal": frozenset(USES),
    "sensitive": frozenset(USES),
    "identifier": frozenset(),
}


class ColumnLookup(Protocol):
    """A table or a relation: resolves a column key (`name`, or `alias.name` in joins)."""

    def column(self, name: str, /) -> ColumnInfo | None:
        """The column with this key, or None."""


def columns_in(node: object) -> Iterator[str]:
    """Every column key referenced in an expression tree (any node type, by its fields).

    Semi-join subqueries (`InUnits`) are skipped: their columns belong to the inner relation, which the
    sandbox compiles and checks separately.
    """
    if isinstance(node, Column):
        yield node.name if node.table is None else f"{node.table}.{node.name}"
        return
    if isinstance(node, InUnits):
        return
    if isinstance(node, tuple | list):
        for item in node:
            yield from columns_in(item)
        return
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        for f in dataclasses.fields(node):
            yield from columns_in(getattr(node, f.name))


def check_plan_grades(
    plan: QueryPlan, table: ColumnLookup, rules: Mapping[str, frozenset[str]] = DEFAULT_GRADE_RULES
) -> None:
    """Refuse a plan that uses a column in a way its grade does not allow.

    Raises:
        PlanRejectedError: names the column, its grade and the use.
    """
    uses: list[tuple[str, str]] = [(c, "group_key") for g in plan.group_by for c in columns_in(g.expr)]
    uses += [(c, "filter") for c in columns_in(plan.where)]
    uses += [(c, "aggregate_input") for a in plan.aggregates for c in columns_in(a.arg)]
    for name, use in uses:
        col = table.column(name)
        if col is None:
            raise PlanRejectedError(f"unknown column {name!r}")
        if use not in rules.get(col.grade, frozenset()):
            raise PlanRejectedError(f"column {name!r} of grade {col.grade!r} may not be used as {use}")
