"""The public part of the data owner's catalog: what the gateway may learn about the data.

The sandbox answers a `DescribeRequest` (and a reload) with a `CatalogInfo`: per dataset its privacy unit,
tables, columns (type, grade, public bounds and domains), data version and the owner's public settings
(caps and per-subject verification caps). Nothing here is computed from the data's values except the
data version (a hash); bounds and domains are what the owner declared.
"""

from __future__ import annotations

from typing import Literal as TypingLiteral
from typing import TypeAlias

from sandbox.owner_caps import OwnerCap, SubjectCap
from sandbox.protocol.base import Envelope, Strict
from sandbox.protocol.plan import ColumnType, Scalar

__all__ = ["CatalogInfo", "ColumnInfo", "ColumnType", "DatasetInfo", "Grade", "TableInfo"]

Grade: TypeAlias = TypingLiteral["public", "internal", "sensitive", "identifier"]


class ColumnInfo(Strict, frozen=True):
    """A column's public description. Identifiers never appear in any query or answer."""

    name: str
    type: ColumnType
    grade: Grade
    lower: int | float | None = None
    upper: int | float | None = None
    domain: tuple[Scalar, ...] | None = None
    description: str = ""


class TableInfo(Strict, frozen=True):
    """A table's public description; each privacy unit keeps at most `max_rows_per_unit` rows.

    A `public` table (a lookup table such as regions) has no privacy unit and is not truncated
    (`max_rows_per_unit` is 0); `unique_key` names a column whose values are unique in it (checked by
    the sandbox at load), the only column a private relation may join it on.
    """

    name: str
    columns: tuple[ColumnInfo, ...]
    max_rows_per_unit: int
    public: bool = False
    unique_key: str | None = None

    def column(self, name: str) -> ColumnInfo | None:
        """Return the column called `name`, or None."""
        for c in self.columns:
            if c.name == name:
                return c
        return None


class DatasetInfo(Strict, frozen=True):
    """A dataset's public description: its privacy unit, tables and data version, and the data owner's
    public settings the sandbox enforces (its cap and per-subject verification caps), so the gateway mirrors
    exactly what the sandbox applies."""

    name: str
    privacy_unit: str
    tables: tuple[TableInfo, ...]
    version: str
    description: str = ""
    owner: str = ""
    caps: OwnerCap | None = None
    subject_caps: tuple[SubjectCap, ...] = ()
    published: bool = False  # the owner publishes this dataset's aggregate use (the transparency page)

    def table(self, name: str) -> TableInfo | None:
        """Return the table called `name`, or None."""
        for t in self.tables:
            if t.name == name:
                return t
        return None


class CatalogInfo(Envelope, frozen=True, tag="catalog"):
    """Everything public about the data the sandbox holds; `grades` are the owner's column-grade rules
    ((grade, allowed uses) pairs; empty: the built-in rules, `sandbox.plans.grades.DEFAULT_GRADE_RULES`);
    `max_cells` is the most cells a plan may ask for there (`Limits.max_groups`: the gateway's analyzer
    compiles every plan against the same limit)."""

    datasets: tuple[DatasetInfo, ...]
    grades: tuple[tuple[str, tuple[str, ...]], ...] = ()
    max_cells: int = 100_000

    def grade_rules(self) -> dict[str, frozenset[str]] | None:
        """The grade rules as `check_plan_grades` takes them, or None for the built-in ones."""
        return {g: frozenset(uses) for g, uses in self.grades} if self.grades else None

    def dataset(self, name: str) -> DatasetInfo | None:
        """Return the dataset called `name`, or None."""
        for d in self.datasets:
            if d.name == name:
                return d
        return None
