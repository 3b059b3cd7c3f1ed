"""What crosses the trust boundary: plans go into the sandbox, noisy releases come out. Nothing else.

The gateway sends a `QueryPlan`: a typed, closed expression tree built by its analyzer from a validated
parse tree. It never sends SQL text; the sandbox regenerates SQL from the tree itself (`sandbox/plans/compile.py`),
so a plan can only express what these node types can express.

The sandbox answers with an `ExecuteResult`: per output row the public group keys and, per aggregate,
a `NoisyValue` (noisy value, mechanism, scale, standard deviation, 95% interval). The exact aggregates
never leave the sandbox process; no type here can carry them.

Wire format: one JSON object per frame (`encode_frame`/`decode_frame`: 4-byte big-endian length, then
UTF-8 JSON). Decoding is strict: unknown node types or keys are refused.
"""

from __future__ import annotations

import abc
import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias
from typing import Literal as TypingLiteral

from sandbox.owner_caps import (
    OwnerCap,
    SubjectCap,
    cap_from_json,
    cap_to_json,
    subject_cap_from_json,
    subject_cap_to_json,
)

if TYPE_CHECKING:  # the model messages live in sandbox.protocol.models, which imports this module
    from sandbox.protocol.models import ModelMessage

PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 64 * 1024 * 1024

# ---------------------------------------------------------------------------------------------------
# Expression tree (a closed set of node types; the analyzer builds it, the sandbox compiles it)
# ---------------------------------------------------------------------------------------------------

Scalar: TypeAlias = int | float | str | bool | None

ARITHMETIC_OPS = frozenset({"+", "-", "*", "/", "%"})
COMPARISON_OPS = frozenset({"=", "<>", "<", "<=", ">", ">="})
LOGICAL_OPS = frozenset({"AND", "OR"})
BINARY_OPS = ARITHMETIC_OPS | COMPARISON_OPS | LOGICAL_OPS
UNARY_OPS = frozenset({"-", "NOT"})


@dataclass(frozen=True, slots=True)
class Column:
    """A column by its catalog name; `table` is the alias qualifying it when the plan has a `source`.

    Without a source (one table) `table` is None. With a source every column is qualified by the
    alias of the relation that provides it (a table alias or a pre-aggregation alias).
    """

    name: str
    table: str | None = None


@dataclass(frozen=True, slots=True)
class Literal:
    """A constant: integer, finite float, string, boolean or NULL."""

    value: Scalar

    def __post_init__(self) -> None:
        if isinstance(self.value, float) and not math.isfinite(self.value):
            raise ValueError("literal must be finite")


@dataclass(frozen=True, slots=True)
class Unary:
    """`-x` or `NOT x`."""

    op: str
    operand: Expr

    def __post_init__(self) -> None:
        if self.op not in UNARY_OPS:
            raise ValueError(f"unknown unary operator {self.op!r}")


@dataclass(frozen=True, slots=True)
class Binary:
    """Arithmetic, comparison or AND/OR."""

    op: str
    left: Expr
    right: Expr

    def __post_init__(self) -> None:
        if self.op not in BINARY_OPS:
            raise ValueError(f"unknown binary operator {self.op!r}")


@dataclass(frozen=True, slots=True)
class IsNull:
    """`x IS [NOT] NULL`."""

    operand: Expr
    negated: bool = False


@dataclass(frozen=True, slots=True)
class InList:
    """`x [NOT] IN (literal, ...)`."""

    operand: Expr
    values: tuple[Literal, ...]
    negated: bool = False


@dataclass(frozen=True, slots=True)
class Between:
    """`x [NOT] BETWEEN low AND high`."""

    operand: Expr
    low: Expr
    high: Expr
    negated: bool = False


@dataclass(frozen=True, slots=True)
class InUnits:
    """Semi-join filter: the row's privacy unit [NOT] IN the units of `source` whose rows satisfy `where`.

    Compiled as `<outer unit> [NOT] IN (SELECT <unit> FROM source WHERE <unit> IS NOT NULL AND where)`.
    Privacy: whether a row of unit u is kept depends only on u's own rows (in `source`), so filtering
    never increases any unit's contribution.
    """

    source: Source
    where: Expr | None = None
    negated: bool = False


# ---------------------------------------------------------------------------------------------------
# Sources (FROM): one table, unit joins, public lookups, per-unit pre-aggregation
# ---------------------------------------------------------------------------------------------------

JOIN_KINDS = frozenset({"inner", "left"})
UNIT_AGGREGATES = frozenset({"sum", "count", "count_star", "avg", "min", "max"})


@dataclass(frozen=True, slots=True)
class TableSource:
    """One table of the dataset under an alias."""

    table: str
    alias: str


@dataclass(frozen=True, slots=True)
class UnitJoin:
    """`left [INNER|LEFT] JOIN right ON left.unit = right.unit` between private tables."""

    left: Source
    right: TableSource
    kind: str = "inner"

    def __post_init__(self) -> None:
        if self.kind not in JOIN_KINDS:
            raise ValueError(f"unknown join kind {self.kind!r}")


@dataclass(frozen=True, slots=True)
class PublicJoin:
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


@dataclass(frozen=True, slots=True)
class UnitOutput:
    """One output of a per-unit pre-aggregation: `kind(column)` (column None for COUNT(*))."""

    name: str
    kind: str
    column: Column | None = None

    def __post_init__(self) -> None:
        if self.kind not in UNIT_AGGREGATES:
            raise ValueError(f"unknown per-unit aggregate {self.kind!r}")
        if (self.column is None) != (self.kind == "count_star"):
            raise ValueError("count_star takes no column; every other per-unit aggregate takes one")


@dataclass(frozen=True, slots=True)
class UnitAggregate:
    """`(SELECT unit, outputs... FROM input WHERE where GROUP BY unit) AS alias`: one row per unit."""

    input: Source
    where: Expr | None
    outputs: tuple[UnitOutput, ...]
    alias: str


Source: TypeAlias = TableSource | UnitJoin | PublicJoin | UnitAggregate


# ---------------------------------------------------------------------------------------------------
# Expressions (continued): CASE, casts, allowlisted function calls
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Case:
    """`CASE WHEN c1 THEN v1 ... [ELSE e] END` (searched form; a missing ELSE is NULL)."""

    whens: tuple[tuple[Expr, Expr], ...]
    else_: Expr | None = None

    def __post_init__(self) -> None:
        if not self.whens:
            raise ValueError("CASE needs at least one WHEN")


@dataclass(frozen=True, slots=True)
class Cast:
    """A cast to a catalog type. Always rendered as TRY_CAST (a failing cast is NULL, never an error
    quoting data); `try_cast` only records what the consumer wrote."""

    operand: Expr
    to: ColumnType
    try_cast: bool = True

    def __post_init__(self) -> None:
        if self.to not in ("int64", "float64", "string", "bool"):
            raise ValueError(f"unknown cast target {self.to!r}")


@dataclass(frozen=True, slots=True)
class Func:
    """A call of an allowlisted scalar function (`sandbox.plans.functions.FUNCTIONS`), by canonical name."""

    name: str
    args: tuple[Expr, ...]


Expr: TypeAlias = (
    Column | Literal | Unary | Binary | IsNull | InList | Between | InUnits | Case | Cast | Func
)


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
BOUNDED_KINDS = frozenset(
    {
        AggregateKind.SUM,
        AggregateKind.AVG,
        AggregateKind.VAR_POP,
        AggregateKind.VAR_SAMP,
        AggregateKind.STDDEV_POP,
        AggregateKind.STDDEV_SAMP,
        AggregateKind.QUANTILE,
    }
)
VARIANCE_KINDS = frozenset(
    {AggregateKind.VAR_POP, AggregateKind.VAR_SAMP, AggregateKind.STDDEV_POP, AggregateKind.STDDEV_SAMP}
)


@dataclass(frozen=True, slots=True)
class Aggregate:
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


@dataclass(frozen=True, slots=True)
class GroupKey:
    """A GROUP BY key: output name, the expression grouped by, and its public domain.

    The domain is computed from public information only (a column's declared domain, or the values an
    expression takes over it); rows whose key is outside the domain are dropped, and every domain value
    is answered. `None` marks a key without a public domain: its values come from the data and are
    released only through DP partition selection (the plan's `partition_selection`).
    """

    name: str
    expr: Expr
    domain: tuple[Scalar, ...] | None


@dataclass(frozen=True, slots=True)
class OutputColumn:
    """A column of the answer: a group key (`group_index`) or an aggregate (`aggregate_index`)."""

    name: str
    group_index: int | None = None
    aggregate_index: int | None = None

    def __post_init__(self) -> None:
        if (self.group_index is None) == (self.aggregate_index is None):
            raise ValueError("an output column refers to exactly one group key or aggregate")


@dataclass(frozen=True, slots=True)
class QueryPlan:
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
            if out.aggregate_index is not None and not (
                0 <= out.aggregate_index < len(self.aggregates)
            ):
                raise ValueError("output refers to a missing aggregate")


# ---------------------------------------------------------------------------------------------------
# The public part of the data owner's catalog (what the gateway may learn)
# ---------------------------------------------------------------------------------------------------

ColumnType: TypeAlias = TypingLiteral["int64", "float64", "string", "bool"]
Grade: TypeAlias = TypingLiteral["public", "internal", "sensitive", "identifier"]


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    """A column's public description. Identifiers never appear in any query or answer."""

    name: str
    type: ColumnType
    grade: Grade
    lower: float | None = None
    upper: float | None = None
    domain: tuple[Scalar, ...] | None = None
    description: str = ""


@dataclass(frozen=True, slots=True)
class TableInfo:
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


@dataclass(frozen=True, slots=True)
class DatasetInfo:
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


@dataclass(frozen=True, slots=True)
class CatalogInfo:
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


# ---------------------------------------------------------------------------------------------------
# Releases (what comes out)
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NoisyValue:
    """One released value with its noise description and a 95% confidence interval."""

    value: float | int
    mechanism: str
    scale: float
    stddev: float
    ci_lower: float
    ci_upper: float

    def __post_init__(self) -> None:
        for name in ("value", "scale", "stddev", "ci_lower", "ci_upper"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                raise ValueError(f"NoisyValue.{name} must be a finite number")


@dataclass(frozen=True, slots=True)
class ReleaseRow:
    """One answer row: public group keys (from the declared domain) and one noisy value per aggregate."""

    keys: tuple[Scalar, ...]
    values: tuple[NoisyValue, ...]


@dataclass(frozen=True, slots=True)
class ReleaseCost:
    """What one measurement of the plan cost, from its OpenDP privacy map."""

    aggregate_index: int
    component: str  # "count" or "sum"
    mechanism: str
    sensitivity: int | float  # the d_in: an exact int for the integer mechanisms (may exceed 2^53)
    scale: float
    epsilon: float
    delta: float = 0.0
    threshold: int = 0  # partition selection ("select" component): the release threshold
    rho: float = 0.0  # zCDP grants: the measurement's rho (its `epsilon` is then 0)


@dataclass(frozen=True, slots=True)
class ExecuteRequest:
    """Run `plan`, spending at most `epsilon` and `delta` (the gateway has already charged them).

    zCDP grants (`rho` > 0): the plan is priced in rho with the Gaussian family (`sandbox.pricing.zcdp`) and
    `epsilon` is 0. What the release counts on the data owner's cap the sandbox derives from its own
    pricing and the owner's catalog alone (`sandbox.pricing.cap_rules`).
    """

    request_id: str
    plan: QueryPlan
    epsilon: float
    delta: float = 0.0
    rho: float = 0.0


@dataclass(frozen=True, slots=True)
class ExecuteResult:
    """The sandbox's answer: noisy rows and the cost of every measurement that produced them."""

    rows: tuple[ReleaseRow, ...]
    costs: tuple[ReleaseCost, ...]
    dataset_version: str


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """A refusal before touching data (`rejected`, with a data-independent message) or a uniform failure."""

    kind: TypingLiteral["rejected", "failed", "bad_request"]
    message: str = ""


@dataclass(frozen=True, slots=True)
class DescribeRequest:
    """Ask for the public catalog."""


@dataclass(frozen=True, slots=True)
class HealthRequest:
    """Liveness probe."""


@dataclass(frozen=True, slots=True)
class HealthReply:
    """Liveness answer with the sandbox's lock-down state and its tie to the gateway that started it.

    `parent_pid` is that gateway's pid (0: the sandbox was started on its own); `orphaned` is True once
    that gateway is gone (`sandbox.process.lifecycle`).
    """

    serving: bool
    locked_down: bool
    pid: int = field(default=0)
    parent_pid: int = field(default=0)
    orphaned: bool = field(default=False)


class ExtensionMessage(abc.ABC):
    """Base of boundary messages defined in other sandbox modules (e.g. `sandbox.protocol.verification`).

    A subclass sets `TYPE` (its frame tag), implements `body_json`, and registers its decoder with
    `register_extension`; decoding stays strict (the decoder refuses unknown keys).
    """

    __slots__ = ()
    TYPE: ClassVar[str] = ""

    @abc.abstractmethod
    def body_json(self) -> dict[str, Any]:
        """The message's fields as JSON (without the "type" tag)."""


_EXTENSIONS: dict[str, Callable[[dict[str, Any]], ExtensionMessage]] = {}


def register_extension(tag: str, decoder: Callable[[dict[str, Any]], ExtensionMessage]) -> None:
    """Register the decoder of an extension message type `tag` (idempotent for the same decoder)."""
    if tag in _EXTENSIONS and _EXTENSIONS[tag] is not decoder:
        raise ValueError(f"message type {tag!r} already registered")
    _EXTENSIONS[tag] = decoder


# A string alias: ModelMessage lives in sandbox/protocol/models.py, which imports this module.
Message: TypeAlias = (
    "ExecuteRequest | ExecuteResult | ErrorReply | DescribeRequest | CatalogInfo | HealthRequest"
    " | HealthReply | ExtensionMessage | ModelMessage"
)

# ---------------------------------------------------------------------------------------------------
# JSON codec (strict)
# ---------------------------------------------------------------------------------------------------


_MODEL_TAGS = frozenset({"train", "train_result", "evaluate", "evaluate_result"})


class ProtocolError(ValueError):
    """A frame or message is malformed."""


def _expr_to_json(e: Expr) -> dict[str, Any]:
    match e:
        case Column(name, None):
            return {"t": "col", "name": name}
        case Column(name, table):
            return {"t": "col", "name": name, "table": table}
        case InUnits(source, where, negated):
            return {
                "t": "in_units",
                "source": source_to_json(source),
                "where": None if where is None else _expr_to_json(where),
                "negated": negated,
            }
        case Literal(value):
            return {"t": "lit", "value": value}
        case Unary(op, operand):
            return {"t": "unary", "op": op, "operand": _expr_to_json(operand)}
        case Binary(op, left, right):
            return {"t": "bin", "op": op, "l": _expr_to_json(left), "r": _expr_to_json(right)}
        case IsNull(operand, negated):
            return {"t": "isnull", "operand": _expr_to_json(operand), "negated": negated}
        case InList(operand, values, negated):
            return {
                "t": "in",
                "operand": _expr_to_json(operand),
                "values": [v.value for v in values],
                "negated": negated,
            }
        case Between(operand, low, high, negated):
            return {
                "t": "between",
                "operand": _expr_to_json(operand),
                "low": _expr_to_json(low),
                "high": _expr_to_json(high),
                "negated": negated,
            }
        case Case(whens, else_):
            return {
                "t": "case",
                "whens": [[_expr_to_json(c), _expr_to_json(v)] for c, v in whens],
                "else": None if else_ is None else _expr_to_json(else_),
            }
        case Cast(operand, to, try_cast):
            return {"t": "cast", "operand": _expr_to_json(operand), "to": to, "try": try_cast}
        case Func(name, args):
            return {"t": "func", "name": name, "args": [_expr_to_json(a) for a in args]}
    raise ProtocolError(f"not an expression: {type(e).__name__}")


def _keys(d: dict[str, Any], allowed: set[str]) -> None:
    extra = set(d) - allowed
    if extra:
        raise ProtocolError(f"unexpected keys {sorted(extra)}")


def _scalar(v: Any) -> Scalar:
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float) and math.isfinite(v):
        return v
    raise ProtocolError("literal must be a finite number, string, boolean or null")


def _expr_from_json(d: Any, depth: int = 0) -> Expr:
    if depth > 64:
        raise ProtocolError("expression nested too deeply")
    if not isinstance(d, dict):
        raise ProtocolError("expression must be an object")
    t = d.get("t")
    try:
        if t == "col":
            _keys(d, {"t", "name", "table"})
            table = d.get("table")
            if not isinstance(d["name"], str) or not (table is None or isinstance(table, str)):
                raise ProtocolError("column name must be a string")
            return Column(d["name"], table)
        if t == "in_units":
            _keys(d, {"t", "source", "where", "negated"})
            return InUnits(
                source_from_json(d["source"], depth + 1),
                None if d["where"] is None else _expr_from_json(d["where"], depth + 1),
                _bool(d["negated"]),
            )
        if t == "lit":
            _keys(d, {"t", "value"})
            return Literal(_scalar(d["value"]))
        if t == "unary":
            _keys(d, {"t", "op", "operand"})
            return Unary(str(d["op"]), _expr_from_json(d["operand"], depth + 1))
        if t == "bin":
            _keys(d, {"t", "op", "l", "r"})
            return Binary(
                str(d["op"]), _expr_from_json(d["l"], depth + 1), _expr_from_json(d["r"], depth + 1)
            )
        if t == "isnull":
            _keys(d, {"t", "operand", "negated"})
            return IsNull(_expr_from_json(d["operand"], depth + 1), bool(d["negated"]))
        if t == "in":
            _keys(d, {"t", "operand", "values", "negated"})
            return InList(
                _expr_from_json(d["operand"], depth + 1),
                tuple(Literal(_scalar(v)) for v in d["values"]),
                bool(d["negated"]),
            )
        if t == "between":
            _keys(d, {"t", "operand", "low", "high", "negated"})
            return Between(
                _expr_from_json(d["operand"], depth + 1),
                _expr_from_json(d["low"], depth + 1),
                _expr_from_json(d["high"], depth + 1),
                bool(d["negated"]),
            )
        if t == "case":
            _keys(d, {"t", "whens", "else"})
            whens = d["whens"]
            if not isinstance(whens, list) or not all(
                isinstance(w, list) and len(w) == 2 for w in whens
            ):
                raise ProtocolError("CASE whens must be [condition, value] pairs")
            return Case(
                tuple(
                    (_expr_from_json(c, depth + 1), _expr_from_json(v, depth + 1)) for c, v in whens
                ),
                None if d["else"] is None else _expr_from_json(d["else"], depth + 1),
            )
        if t == "cast":
            _keys(d, {"t", "operand", "to", "try"})
            if not isinstance(d["try"], bool) or d["to"] not in ("int64", "float64", "string", "bool"):
                raise ProtocolError("malformed cast")
            return Cast(_expr_from_json(d["operand"], depth + 1), d["to"], d["try"])
        if t == "func":
            _keys(d, {"t", "name", "args"})
            if not isinstance(d["name"], str) or not isinstance(d["args"], list):
                raise ProtocolError("malformed function call")
            return Func(d["name"], tuple(_expr_from_json(a, depth + 1) for a in d["args"]))
    except (KeyError, TypeError) as exc:
        raise ProtocolError(f"malformed expression node {t!r}") from exc
    except ValueError as exc:
        if isinstance(exc, ProtocolError):
            raise
        raise ProtocolError(str(exc)) from exc
    raise ProtocolError(f"unknown expression node {t!r}")


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ProtocolError("expected a boolean")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ProtocolError("expected a string")
    return v


def source_to_json(s: Source) -> dict[str, Any]:
    """Serialize a FROM tree."""
    match s:
        case TableSource(table, alias):
            return {"t": "table", "table": table, "alias": alias}
        case UnitJoin(left, right, kind):
            return {"t": "unit_join", "left": source_to_json(left),
                    "right": source_to_json(right), "kind": kind}
        case PublicJoin(left, right, left_key, right_key, kind):
            return {"t": "public_join", "left": source_to_json(left),
                    "right": source_to_json(right), "left_key": _expr_to_json(left_key),
                    "right_key": right_key, "kind": kind}
        case UnitAggregate(inp, where, outputs, alias):
            return {
                "t": "unit_agg",
                "input": source_to_json(inp),
                "where": None if where is None else _expr_to_json(where),
                "outputs": [
                    {"name": o.name, "kind": o.kind,
                     "column": None if o.column is None else _expr_to_json(o.column)}
                    for o in outputs
                ],
                "alias": alias,
            }
    raise ProtocolError(f"not a source: {type(s).__name__}")


def _table_source(d: Any, depth: int) -> TableSource:
    s = source_from_json(d, depth)
    if not isinstance(s, TableSource):
        raise ProtocolError("the right side of a join must be a table")
    return s


def source_from_json(d: Any, depth: int = 0) -> Source:
    """Deserialize and validate a FROM tree."""
    if depth > 64:
        raise ProtocolError("source nested too deeply")
    if not isinstance(d, dict):
        raise ProtocolError("source must be an object")
    t = d.get("t")
    try:
        if t == "table":
            _keys(d, {"t", "table", "alias"})
            return TableSource(_str(d["table"]), _str(d["alias"]))
        if t == "unit_join":
            _keys(d, {"t", "left", "right", "kind"})
            return UnitJoin(source_from_json(d["left"], depth + 1),
                            _table_source(d["right"], depth + 1), _str(d["kind"]))
        if t == "public_join":
            _keys(d, {"t", "left", "right", "left_key", "right_key", "kind"})
            return PublicJoin(
                source_from_json(d["left"], depth + 1),
                _table_source(d["right"], depth + 1),
                _expr_from_json(d["left_key"], depth + 1),
                _str(d["right_key"]),
                _str(d["kind"]),
            )
        if t == "unit_agg":
            _keys(d, {"t", "input", "where", "outputs", "alias"})
            outputs = []
            for o in d["outputs"]:
                if not isinstance(o, dict):
                    raise ProtocolError("malformed per-unit output")
                _keys(o, {"name", "kind", "column"})
                col = None if o["column"] is None else _expr_from_json(o["column"], depth + 1)
                if col is not None and not isinstance(col, Column):
                    raise ProtocolError("per-unit aggregates take a column")
                outputs.append(UnitOutput(_str(o["name"]), _str(o["kind"]), col))
            return UnitAggregate(
                source_from_json(d["input"], depth + 1),
                None if d["where"] is None else _expr_from_json(d["where"], depth + 1),
                tuple(outputs),
                _str(d["alias"]),
            )
    except (KeyError, TypeError) as exc:
        raise ProtocolError(f"malformed source node {t!r}") from exc
    except ValueError as exc:
        if isinstance(exc, ProtocolError):
            raise
        raise ProtocolError(str(exc)) from exc
    raise ProtocolError(f"unknown source node {t!r}")
def _number_or_none(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ProtocolError("expected a finite number or null")
    return float(v)


def _aggregate_from_json(a: Any) -> Aggregate:
    if not isinstance(a, dict):
        raise ProtocolError("aggregate must be an object")
    _keys(a, {"kind", "arg", "weight", "lower", "upper", "quantile", "interval_share"})
    weight = _number_or_none(a["weight"])
    if weight is None:
        raise ProtocolError("aggregate weight must be a number")
    return Aggregate(
        AggregateKind(a["kind"]),
        None if a["arg"] is None else _expr_from_json(a["arg"]),
        weight,
        _number_or_none(a["lower"]),
        _number_or_none(a["upper"]),
        _number_or_none(a["quantile"]),
        _number_or_none(a.get("interval_share")),
    )


def _group_key_from_json(g: Any) -> GroupKey:
    if not isinstance(g, dict):
        raise ProtocolError("group key must be an object")
    _keys(g, {"name", "expr", "domain"})
    dom = g["domain"]
    if dom is not None and not isinstance(dom, list):
        raise ProtocolError("group key domain must be a list or null")
    return GroupKey(
        str(g["name"]),
        _expr_from_json(g["expr"]),
        None if dom is None else tuple(_scalar(v) for v in dom),
    )


def plan_to_json(p: QueryPlan) -> dict[str, Any]:
    """Serialize a plan."""
    return {
        "dataset": p.dataset,
        "table": p.table,
        "aggregates": [
            {
                "kind": a.kind.value,
                "arg": None if a.arg is None else _expr_to_json(a.arg),
                "weight": a.weight,
                "lower": a.lower,
                "upper": a.upper,
                "quantile": a.quantile,
                # only when set, so plans (and cache keys) without it are unchanged
                **({} if a.interval_share is None else {"interval_share": a.interval_share}),
            }
            for a in p.aggregates
        ],
        "outputs": [
            {"name": o.name, "group_index": o.group_index, "aggregate_index": o.aggregate_index}
            for o in p.outputs
        ],
        "where": None if p.where is None else _expr_to_json(p.where),
        "group_by": [
            {
                "name": g.name,
                "expr": _expr_to_json(g.expr),
                "domain": None if g.domain is None else list(g.domain),
            }
            for g in p.group_by
        ],
        "source": None if p.source is None else source_to_json(p.source),
        # only when set, so plans (and cache keys) without it are unchanged
        **({} if p.selection_weight == 1.0 else {"selection_weight": p.selection_weight}),
    }


def plan_from_json(d: Any) -> QueryPlan:
    """Deserialize and validate a plan."""
    if not isinstance(d, dict):
        raise ProtocolError("plan must be an object")
    _keys(d, {"dataset", "table", "aggregates", "outputs", "where", "group_by", "source",
              "selection_weight"})
    try:
        return QueryPlan(
            dataset=str(d["dataset"]),
            table=str(d["table"]),
            aggregates=tuple(_aggregate_from_json(a) for a in d["aggregates"]),
            outputs=tuple(
                OutputColumn(str(o["name"]), o["group_index"], o["aggregate_index"])
                for o in d["outputs"]
            ),
            where=None if d["where"] is None else _expr_from_json(d["where"]),
            group_by=tuple(_group_key_from_json(g) for g in d["group_by"]),
            source=None if d.get("source") is None else source_from_json(d["source"]),
            selection_weight=_number_or_none(d.get("selection_weight", 1.0)) or 0.0,  # 0: refused below
        )
    except ProtocolError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed plan: {exc}") from exc


def _catalog_to_json(c: CatalogInfo) -> dict[str, Any]:
    return {
        "datasets": [
            {
                "name": d.name,
                "privacy_unit": d.privacy_unit,
                "version": d.version,
                "description": d.description,
                "owner": d.owner,
                "caps": None if d.caps is None else cap_to_json(d.caps),
                "subject_caps": [subject_cap_to_json(c) for c in d.subject_caps],
                "published": d.published,
                "tables": [
                    {
                        "name": t.name,
                        "max_rows_per_unit": t.max_rows_per_unit,
                        "public": t.public,
                        "unique_key": t.unique_key,
                        "columns": [
                            {
                                "name": col.name,
                                "type": col.type,
                                "grade": col.grade,
                                "lower": col.lower,
                                "upper": col.upper,
                                "domain": None if col.domain is None else list(col.domain),
                                "description": col.description,
                            }
                            for col in t.columns
                        ],
                    }
                    for t in d.tables
                ],
            }
            for d in c.datasets
        ],
        "grades": [[g, list(uses)] for g, uses in c.grades],
        "max_cells": c.max_cells,
    }


def _catalog_from_json(d: dict[str, Any]) -> CatalogInfo:
    return CatalogInfo(
        max_cells=int(d.get("max_cells", 100_000)),
        datasets=tuple(
            DatasetInfo(
                name=ds["name"],
                privacy_unit=ds["privacy_unit"],
                version=ds["version"],
                description=ds["description"],
                owner=ds["owner"],
                caps=None if ds.get("caps") is None else cap_from_json(ds["caps"]),
                subject_caps=tuple(subject_cap_from_json(v) for v in ds.get("subject_caps", ())),
                published=bool(ds.get("published", False)),
                tables=tuple(
                    TableInfo(
                        name=t["name"],
                        max_rows_per_unit=int(t["max_rows_per_unit"]),
                        public=bool(t.get("public", False)),
                        unique_key=t.get("unique_key"),
                        columns=tuple(
                            ColumnInfo(
                                name=c["name"],
                                type=c["type"],
                                grade=c["grade"],
                                lower=c["lower"],
                                upper=c["upper"],
                                domain=None if c["domain"] is None else tuple(c["domain"]),
                                description=c["description"],
                            )
                            for c in t["columns"]
                        ),
                    )
                    for t in ds["tables"]
                ),
            )
            for ds in d["datasets"]
        ),
        grades=tuple((str(g), tuple(str(u) for u in uses)) for g, uses in d.get("grades", ())),
    )


def _noisy_to_json(v: NoisyValue) -> list[Any]:
    return [v.value, v.mechanism, v.scale, v.stddev, v.ci_lower, v.ci_upper]


def to_json(msg: Message) -> dict[str, Any]:
    """Serialize any protocol message to a JSON-compatible dict tagged with its type."""
    from sandbox.protocol import models as model_protocol  # model messages (TrainRequest, ...): their own codec

    if isinstance(msg, model_protocol.TrainRequest | model_protocol.TrainResult
                  | model_protocol.EvaluateRequest | model_protocol.EvaluateResult):
        return model_protocol.to_json(msg)
    match msg:
        case ExecuteRequest():
            return {
                "type": "execute",
                "request_id": msg.request_id,
                "plan": plan_to_json(msg.plan),
                "epsilon": msg.epsilon,
                "delta": msg.delta,
                "rho": msg.rho,
            }
        case ExecuteResult():
            return {
                "type": "result",
                "dataset_version": msg.dataset_version,
                "rows": [
                    {"keys": list(r.keys), "values": [_noisy_to_json(v) for v in r.values]}
                    for r in msg.rows
                ],
                "costs": [
                    [c.aggregate_index, c.component, c.mechanism, c.sensitivity, c.scale,
                     c.epsilon, c.delta, c.threshold, c.rho]
                    for c in msg.costs
                ],
            }
        case ErrorReply():
            return {"type": "error", "kind": msg.kind, "message": msg.message}
        case DescribeRequest():
            return {"type": "describe"}
        case CatalogInfo():
            return {"type": "catalog", **_catalog_to_json(msg)}
        case HealthRequest():
            return {"type": "health"}
        case HealthReply():
            return {
                "type": "health_reply",
                "serving": msg.serving,
                "locked_down": msg.locked_down,
                "pid": msg.pid,
                "parent_pid": msg.parent_pid,
                "orphaned": msg.orphaned,
            }
        case ExtensionMessage():
            return {"type": msg.TYPE, **msg.body_json()}
    raise ProtocolError(f"not a protocol message: {type(msg).__name__}")


def from_json(d: Any) -> Message:
    """Deserialize and validate a protocol message."""
    if not isinstance(d, dict):
        raise ProtocolError("message must be an object")
    t = d.get("type")
    if t in _MODEL_TAGS:
        from sandbox.protocol import models as model_protocol

        return model_protocol.from_json(d)
    try:
        if t == "execute":
            _keys(d, {"type", "request_id", "plan", "epsilon", "delta", "rho"})
            eps, delta, rho = d["epsilon"], d.get("delta", 0.0), d.get("rho", 0.0)
            for v in (eps, delta, rho):
                if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
                    raise ProtocolError("epsilon, delta and rho must be finite numbers")
            return ExecuteRequest(
                str(d["request_id"]), plan_from_json(d["plan"]), float(eps), float(delta), float(rho),
            )
        if t == "result":
            return ExecuteResult(
                rows=tuple(
                    ReleaseRow(
                        keys=tuple(_scalar(k) for k in r["keys"]),
                        values=tuple(NoisyValue(*v) for v in r["values"]),
                    )
                    for r in d["rows"]
                ),
                costs=tuple(ReleaseCost(*c) for c in d["costs"]),
                dataset_version=str(d["dataset_version"]),
            )
        if t == "error":
            kind = d["kind"]
            if kind not in ("rejected", "failed", "bad_request"):
                raise ProtocolError("unknown error kind")
            return ErrorReply(kind, str(d["message"]))
        if t == "describe":
            return DescribeRequest()
        if t == "catalog":
            return _catalog_from_json(d)
        if t == "health":
            return HealthRequest()
        if t == "health_reply":
            return HealthReply(bool(d["serving"]), bool(d["locked_down"]), int(d["pid"]),
                               int(d.get("parent_pid", 0)), bool(d.get("orphaned", False)))
        if isinstance(t, str) and t in _EXTENSIONS:
            return _EXTENSIONS[t](d)
    except ProtocolError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed {t!r} message") from exc
    raise ProtocolError(f"unknown message type {t!r}")


def encode_frame(msg: Message) -> bytes:
    """Length-prefixed JSON frame for a message."""
    body = json.dumps(to_json(msg), separators=(",", ":"), allow_nan=False).encode()
    if len(body) > MAX_FRAME_BYTES:
        raise ProtocolError("frame too large")
    return struct.pack(">I", len(body)) + body


def decode_body(body: bytes) -> Message:
    """Decode a frame body (without its length prefix)."""
    try:
        obj = json.loads(body.decode(), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError("frame is not valid JSON") from exc
    return from_json(obj)


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f"non-finite number {name} in frame")
