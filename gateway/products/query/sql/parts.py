"""What the analyzer collects from one SELECT while it reads it: the group keys, aggregates and outputs of the
plan, in order, and the relation its FROM clause reads."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.products.query.sql.nodes import Scope
from sandbox.plans.bounds import Columns
from sandbox.plans.relation import Relation
from sandbox.protocol.messages import Aggregate, DatasetInfo, GroupKey, OutputColumn

__all__ = ["PlanParts"]


@dataclass
class PlanParts:
    """The plan under construction (`analyze.py` fills it in clause by clause)."""

    dataset: DatasetInfo
    keys: list[GroupKey] = field(default_factory=list)
    aggregates: list[Aggregate] = field(default_factory=list)
    outputs: list[OutputColumn] = field(default_factory=list)
    relation: Relation | None = None  # the FROM clause's relation when it is more than one plain table
    scope: Scope | None = None

    def columns(self) -> Columns:
        """Column descriptions by plan key: the source's relation (joined tables and derived
        per-unit columns included), or the single table."""
        if self.relation is not None:
            return self.relation
        assert self.scope is not None
        return self.scope.table

    def add(self, aggregate: Aggregate) -> int:
        """The index of `aggregate` in the plan, added if it is new (equal aggregates are computed once)."""
        if aggregate in self.aggregates:
            return self.aggregates.index(aggregate)
        self.aggregates.append(aggregate)
        return len(self.aggregates) - 1
