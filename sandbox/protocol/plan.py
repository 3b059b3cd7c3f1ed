"""The query plan: what the gateway asks the sandbox to compute, as a typed, closed expression tree.

The gateway's analyzer builds a `QueryPlan` from a validated parse tree; it never sends SQL text, and the
sandbox regenerates SQL from the tree itself (`sandbox/plans/compile.py`), so a plan can only express what
these node types can express. The set of node types is closed: an expression is one of the `Expr` types
and a FROM tree one of the `Source` types, each tagged on the wire by its `t` field; a frame naming any
other node, or any field a node does not declare, is refused (`sandbox.protocol.wire`).

`plan_to_json` is the plan's canonical JSON form, used for cache keys (`gateway.products.query.cache`):
it is kept stable so that releases cached by earlier versions are still found.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any, TypeAlias
from typing import Literal as TypingLiteral

import msgspec

from sandbox.protocol.base import ProtocolError, Strict

__all__ = [
    "ARITHMETIC_OPS", "BINARY_OPS", "BOUNDED_KINDS", "COMPARISON_OPS", "JOIN_KINDS", "LOGICAL_OPS",
    "MAX_NESTING", "NO_ARGUMENT_KINDS", "UNARY_OPS", "UNIT_AGGREGATES", "VARIANCE_KINDS", "Aggregate",
    "AggregateKind", "Between", "Binary", "Case", "Cast", "Column", "ColumnType", "Expr", "Func", "GroupKey",
    "InList", "InUnits", "IsNull", "Literal", "OutputColumn", "PlanNode", "PublicJoin", "QueryPlan", "Scalar",
    "Source", "TableSource", "Unary", "UnitAggregate", "UnitJoin", "UnitOutput", "check_nesting", "finite_scalars",
    "plan_from_json", "plan_to_json",
]

Scalar: TypeAlias = int | float | str | bool | None
ColumnType: TypeAlias = TypingLiteral["int64", "float64", "string", "bool"]

ARITHMETIC_OPS = frozenset({"+", "-", "*", "/", "%"})
COMPARISON_OPS = frozenset({"=", "<>", "<", "<=", ">", ">="})
LOGICAL_OPS = frozenset({"AND", "OR"})
BINARY_OPS = ARITHMETIC_OPS | COMPARISON_OPS | LOGICAL_OPS
UNARY_OPS = frozenset({"-", "NOT"})
JOIN_KINDS = frozenset({"inner", "left"})
UNIT_AGGREGATES = frozenset({"sum", "count", "count_star", "avg", "min", "max"})
MAX_NESTING = 65  # the longest chain of nested plan nodes a decoded plan may have (depths 0 to 64)


def finite_scalars(values: tuple[Scalar, ...]) -> bool:
    """True when no value is a NaN or infinite float."""
    return all(math.isfinite(v) for v in values if isinstance(v, float))


class PlanNode(Strict, frozen=True, tag_field="t"):
    """Base of the expression and FROM-tree nodes; each subclass's `tag` is its `t` on the wire."""


# ---------------------------------------------------------------------------------------------------
# Expressions
# ---------------------------------------------------------------------------------------------------


class Column(PlanNode, frozen=True, tag="col", omit_defaults=True):
    """A column by its catalog name; `table` is the alias qualifying it when the plan has a `source`.

    Without a source (one table) `table` is None. With a source every column is qualified by the
    alias of the relation that provides it (a table alias or a pre-aggregation alias).
    """

    name: str
    table: str | None = None


class Literal(PlanNode, frozen=True, tag="lit"):
    """A constant: integer, finite float, string, boolean or NULL."""

    value: Scalar

    def __post_init__(self) -> None:
        if isinstance(self.value, float) and not math.isfinite(self.value):
            raise ValueError("literal must be finite")


class Unary(PlanNode, frozen=True, tag="unary"):
    """`-x` or `NOT x`."""

    op: str
    operand: Expr

    def __post_init__(self) -> None:
        if self.op not in UNARY_OPS:
            raise ValueError(f"unknown unary operator {self.op!r}")


class Binary(PlanNode, frozen=True, tag="bin"):
    """Arithmetic, comparison or AND/OR."""

    op: str
    left: Expr = msgspec.field(name="l")
    right: Expr = msgspec.field(name="r")

    def __post_init__(self) -> None:
        if self.op not in BINARY_OPS:
            raise ValueError(f"unknown binary operator {self.op!r}")


class IsNull(PlanNode, frozen=True, tag="isnull"):
    """`x IS [NOT] NULL`."""

    operand: Expr
    negated: bool = False


class InList(PlanNode, frozen=True, tag="in"):
    """`x [NOT] IN (literal, ...)`."""

    operand: Expr
    values: tuple[Literal, ...]
    negated: bool = False


class Between(PlanNode, frozen=True, tag="between"):
    """`x [NOT] BETWEEN low AND high`."""

    operand: Expr
    low: Expr
    high: Expr
    negated: bool = False


class InUnits(PlanNode, frozen=True, tag="in_units"):
    """Semi-join filter: the row's privacy unit [NOT] IN the units of `source` whose rows satisfy `where`.

    Compiled as `<outer unit> [NOT] IN (SELECT <unit> FROM source WHERE <unit> IS NOT NULL AND where)`.
    Privacy: whether a row of unit u is kept depends only on u's own rows (in `source`), so filtering
    never increases any unit's contribution.
    """

    source: Source
    where: Expr | None = None
    negated: bool = False


class Case(PlanNode, frozen=True, tag="case"):
    """`CASE WHEN c1 THEN v1 ... [ELSE e] END` (searched form; a missing ELSE is NULL)."""

    whens: tuple[tuple[Expr, Expr], ...]
    else_: Expr | None = msgspec.field(name="else", default=None)

    def __post_init__(self) -> None:
        if not self.whens:
            raise ValueError("CASE needs at least one WHEN")


class Cast(PlanNode, frozen=True, tag="cast"):
    """A cast to a catalog type. Always rendered as TRY_CAST (a failing cast is NULL, never an error
    quoting data); `try_cast` only records what the consumer wrote."""

    operand: Expr
    to: ColumnType
    try_cast: bool = msgspec.field(name="try", default=True)

    def __post_init__(self) -> None:
        if self.to not in ("int64", "float64", "string", "bool"):
            raise ValueError(f"unknown cast target {self.to!r}")


class Func(PlanNode, frozen=True, tag="func"):
    """A call of an allowlisted scalar function (`sandbox.plans.functions.FUNCTIONS`), by canonical name."""

    name: str
    args: tuple[Expr, ...]


Expr: TypeAlias = Column | Literal | Unary | Binary | IsNull | InList | Between | InUnits | Case | Cast | Func


# ---------------------------------------------------------------------------------------------------
# Sources (FROM): one table, unit joins, public lookups, per-unit pre-aggregation
# ---------------------------------------------------------------------------------------------------


class TableSource(PlanNode, frozen=True, tag="table"):
    """One table of the dataset under an alias."""

    table: str
    alias: str


class UnitJoin(PlanNode, frozen=True, tag="unit_join"):
    """`left [INNER|LEFT] JOIN right ON left.unit = right.unit` between private tables."""

    left: Source
    right: TableSource
    kind: str = "inner"

    def __post_init__(self) -> None:
        if self.kind not in JOIN_KINDS:
            raise ValueError(f"unknown join kind {self.kind!r}")


class PublicJoin(PlanNode, frozen=True, tag="public_join"):
    """`left [INNER|LEFT] JOIN right ON left_key = right.right_key`; right is a public lookup table
    whose `right_key` is its declared unique key."""

    left: Source
    right: TableSource
    left_key: Expr
    right_key: str
    kind: str = "inner"

    def __post_init__(self) -> None:
        if self.kind not in JOIN_KINDS:
            raise ValueError(f"unknown join kind {self.kind!r}")


class UnitOutput(Strict, frozen=True):
    """One output of a per-unit pre-aggregation: `kind(column)` (column None for COUNT(*))."""

    name: str
    kind: str
    column: Column | None = None

    def __post_init__(self) -> None:
        if self.kind not in UNIT_AGGREGATES:
            raise ValueError(f"unknown per-unit aggregate {self.kind!r}")
        if (self.column is None) != (self.kind == "count_star"):
            raise ValueError("count_star takes no column; every other per-unit aggregate takes one")


class UnitAggregate(PlanNode, frozen=True, tag="unit_agg"):
    """`(SELECT unit, outputs... FROM input WHERE where GROUP BY unit) AS alias`: one row per unit."""

    input: Source
    where: Expr | None
    outputs: tuple[UnitOutput, ...]
    alias: str


Source: TypeAlias = TableSource | UnitJoin | PublicJoin | UnitAggregate


# ---------------------------------------------------------------------------------------------------
# Aggregates, group keys, outputs and the plan
# ---------------------------------------------------------------------------------------------------


class AggregateKind(StrEnum):
    """The aggregates a plan may ask for."""

    COUNT = "count"  # COUNT(*): rows after contribution bounding
    COUNT_COLUMN = "count_column"  # COUNT(expr): non-NULL values of expr
    COUNT_DISTINCT_UNIT = "count_distinct_unit"  # COUNT(DISTINCT <privacy unit>): people per cell
    SUM = "sum"  # SUM(expr), expr clamped to its derived bounds
    AVG = "avg"  # AVG(expr) = noisy SUM / noisy COUNT: two releases
    VAR_POP = "var_pop"  # count, sum, sum of squares: three releases, post-processed
    VAR_SAMP = "var_samp"
    STDDEV_POP = "stddev_pop"
    STDDEV_SAMP = "stddev_samp"
    QUANTILE = "quantile"  # MEDIAN / QUANTILE / PERCENTILE / MIN / MAX: exponential mechanism


NO_ARGUMENT_KINDS = frozenset({AggregateKind.COUNT, AggregateKind.COUNT_DISTINCT_UNIT})
BOUNDED_KINDS = frozenset({
    AggregateKind.SUM, AggregateKind.AVG, AggregateKind.VAR_POP, AggregateKind.VAR_SAMP,
    AggregateKind.STDDEV_POP, AggregateKind.STDDEV_SAMP, AggregateKind.QUANTILE,
})
VARIANCE_KINDS = frozenset(
    {AggregateKind.VAR_POP, AggregateKind.VAR_SAMP, AggregateKind.STDDEV_POP, AggregateKind.STDDEV_SAMP}
)


class Aggregate(Strict, frozen=True):
    """One aggregate of the select list; `weight` is its share of the query's epsilon.

    `lower`/`upper` are the bounds `sandbox.plans.bounds` derives for `arg` from the public catalog (for
    display and cross-checking only: the sandbox recomputes them and refuses a plan that disagrees).
    `quantile` is the quantile's alpha in [0, 1] (MEDIAN 0.5, MIN 0, MAX 1). `interval_share` (quantiles
    only) is the fraction in [0, 1) of the aggregate's epsilon spent on its 95% interval
    (`sandbox.pricing.quantiles`); None means the default, 0 no interval release (the interval is [L, U]).
    """

    kind: AggregateKind
    arg: Expr | None = None
    weight: float = 1.0
    lower: float | None = None
    upper: float | None = None
    quantile: float | None = None
    interval_share: float | None = None

    def __post_init__(self) -> None:
        if (self.arg is None) != (self.kind in NO_ARGUMENT_KINDS):
            raise ValueError("COUNT(*) and COUNT(DISTINCT unit) take no argument; others take one")
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise ValueError("aggregate weight must be finite and positive")
        bounded = self.kind in BOUNDED_KINDS
        if bounded != (self.lower is not None and self.upper is not None):
            raise ValueError("bounded aggregates (and only they) carry lower and upper")
        if self.lower is not None and self.upper is not None and not (
            math.isfinite(self.lower) and math.isfinite(self.upper) and self.lower <= self.upper
        ):
            raise ValueError("aggregate bounds must be finite with lower <= upper")
        if (self.quantile is not None) != (self.kind is AggregateKind.QUANTILE):
            raise ValueError("QUANTILE (and only it) carries a quantile")
        if self.quantile is not None and not 0.0 <= self.quantile <= 1.0:
            raise ValueError("quantile must be in [0, 1]")
        if self.interval_share is not None and (
            self.kind is not AggregateKind.QUANTILE or not 0.0 <= self.interval_share < 1.0
        ):
            raise ValueError("only a QUANTILE carries an interval_share, in [0, 1)")


class GroupKey(Strict, frozen=True):
    """A GROUP BY key: output name, the expression grouped by, and its public domain.

    The domain is computed from public information only (a column's declared domain, or the values an
    expression takes over it); rows whose key is outside the domain are dropped, and every domain value
    is answered. `None` marks a key without a public domain: its values come from the data and are
    released only through DP partition selection (the plan's `partition_selection`).
    """

    name: str
    expr: Expr
    domain: tuple[Scalar, ...] | None

    def __post_init__(self) -> None:
        if self.domain is not None and not finite_scalars(self.domain):
            raise ValueError("a group key's domain values must be finite")


class OutputColumn(Strict, frozen=True):
    """A column of the answer: a group key (`group_index`) or an aggregate (`aggregate_index`)."""

    name: str
    group_index: int | None = None
    aggregate_index: int | None = None

    def __post_init__(self) -> None:
        if (self.group_index is None) == (self.aggregate_index is None):
            raise ValueError("an output column refers to exactly one group key or aggregate")


class QueryPlan(Strict, frozen=True):
    """A validated query over one table of one dataset."""

    dataset: str
    table: str
    aggregates: tuple[Aggregate, ...]
    outputs: tuple[OutputColumn, ...]
    where: Expr | None = None
    group_by: tuple[GroupKey, ...] = ()
    # None: `table` alone (columns unqualified). Otherwise the FROM tree; `table` then names its
    # leftmost table (informational), and every column is a `Column(name, table=alias)`.
    source: Source | None = None
    # Partition selection's weight next to the aggregates' (`Aggregate.weight`): its share of the
    # query's epsilon (or rho) is selection_weight / (selection_weight + sum of the aggregates' weights).
    selection_weight: float = 1.0

    @property
    def partition_selection(self) -> bool:
        """True when some group key has no public domain: the answered cells are chosen by DP
        partition selection (OpenDP's Laplace threshold) instead of enumerated from the domains."""
        return any(g.domain is None for g in self.group_by)

    def __post_init__(self) -> None:
        if not self.aggregates:
            raise ValueError("a plan needs at least one aggregate")
        if not (math.isfinite(self.selection_weight) and self.selection_weight > 0):
            raise ValueError("selection_weight must be finite and positive")
        for out in self.outputs:
            if out.group_index is not None and not 0 <= out.group_index < len(self.group_by):
                raise ValueError("output refers to a missing group key")
            if out.aggregate_index is not None and not 0 <= out.aggregate_index < len(self.aggregates):
                raise ValueError("output refers to a missing aggregate")


# ---------------------------------------------------------------------------------------------------
# Nesting limit and the canonical JSON form
# ---------------------------------------------------------------------------------------------------


def _depth(node: object) -> int:
    """The longest chain of nested plan nodes under `node` (an aggregate, key, node, tuple or leaf)."""
    if isinstance(node, tuple):  # of nodes, of (condition, value) pairs, or of scalars (a domain)
        return max(map(_depth, node)) if node and isinstance(node[0], Strict | tuple) else 0
    if not isinstance(node, Strict):
        return 0
    if isinstance(node, Column | Literal):
        return 1
    if isinstance(node, InList):  # its values are literals: one level, however many
        return 1 + max(_depth(node.operand), 1 if node.values else 0)
    below = max(_depth(getattr(node, f)) for f in node.__struct_fields__)
    return below + 1 if isinstance(node, PlanNode) else below


def check_nesting(plan: QueryPlan) -> None:
    """Refuse a plan whose expressions or FROM tree nest deeper than `MAX_NESTING` nodes.

    Raises:
        ProtocolError: nested too deeply.
    """
    if _depth((plan.where, plan.source, plan.aggregates, plan.group_by)) > MAX_NESTING:
        raise ProtocolError("expression nested too deeply")


def _in_lists(obj: Any, values: Any) -> Any:
    """`obj` (builtins; tuples become lists) with every IN node's `values` replaced by `values(list)`."""
    if isinstance(obj, list | tuple):
        return [_in_lists(x, values) for x in obj]
    if isinstance(obj, dict):
        out = {k: _in_lists(v, values) for k, v in obj.items()}
        if out.get("t") == "in" and isinstance(out.get("values"), list):
            out["values"] = values(out["values"])
        return out
    return obj


def plan_to_json(plan: QueryPlan) -> dict[str, Any]:
    """The plan's canonical JSON form (a JSON-compatible dict; cache keys are built from it).

    It is the wire form with three spellings kept from the first version so cache keys stay stable: an IN
    list holds bare values, and `interval_share` (when None) and `selection_weight` (when 1) are left out.
    """
    d: dict[str, Any] = msgspec.to_builtins(plan)
    if plan.selection_weight == 1.0:
        del d["selection_weight"]
    for a in d["aggregates"]:
        if a["interval_share"] is None:
            del a["interval_share"]
    result: dict[str, Any] = _in_lists(d, lambda vs: [v["value"] for v in vs])
    return result


def plan_from_json(d: Any) -> QueryPlan:
    """Decode and validate `plan_to_json`'s form (strict: unknown nodes, fields and wrong types are refused).

    Raises:
        ProtocolError: not a valid plan.
    """
    try:
        obj = _in_lists(d, lambda vs: [{"t": "lit", "value": v} for v in vs])
        plan = msgspec.convert(obj, QueryPlan, strict=True)
    except (msgspec.ValidationError, RecursionError) as exc:
        raise ProtocolError(f"malformed plan: {exc}") from exc
    check_nesting(plan)
    return plan
