"""Parse-tree pieces shared by the analyzer: table scope, literals, calls and catalog checks.

`Scope.resolve` maps a column reference to its catalog column (refusing identifiers and unknown
names); `literal` turns a constant into a typed plan `Literal`; `function_keys_ok` refuses DISTINCT,
FILTER, ORDER BY, qualified names and named arguments on a function call the analyzer accepts;
`describe` names a refused expression; `check_bounded` and `forbid_nested` are clause-level checks;
`scope_of` is the scope over a FROM clause's relation (joins, subqueries).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from gateway.products.query.sql.tree import (
    EMPTY_ORDER,
    MAX_STRING_LITERAL,
    check_keys,
    fold,
    reject,
    show,
    walk,
)
from sandbox.plans.relation import Relation, leftmost_table
from sandbox.protocol.messages import ColumnInfo, DatasetInfo, Literal, Source, TableInfo

__all__ = [
    "Kind",
    "Resolved",
    "Scope",
    "ScopeEntry",
    "check_bounded",
    "column_kind",
    "describe",
    "forbid_nested",
    "function_keys_ok",
    "literal",
    "scope_entry",
    "scope_of",
]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_INTEGER_TEXT = re.compile(r"-?[0-9][0-9_]{0,99}")
_NUMERIC_TEXT = re.compile(r"-?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?(?:[eE][+-]?[0-9]+)?")

_LABELS: dict[str, tuple[str, str]] = {
    "~~": ("LIKE", "LIKE"),
    "!~~": ("LIKE", "NOT LIKE"),
    "~~*": ("ILIKE", "ILIKE"),
    "!~~*": ("ILIKE", "NOT ILIKE"),
    "~~~": ("GLOB", "GLOB"),
    "regexp_full_match": ("SIMILAR_TO", "SIMILAR TO"),
    "OPERATOR_CAST": ("CAST", "CAST"),
    "CASE_EXPR": ("CASE", "CASE"),
    "OPERATOR_TRY": ("TRY", "TRY(...)"),
    "COLLATE": ("COLLATE", "COLLATE"),
    "VALUE_PARAMETER": ("PARAMETER", "query parameters"),
    "LAMBDA": ("LAMBDA", "lambda expressions"),
    "STAR": ("STAR", "* and COLUMNS(...)"),
    "POSITIONAL_REFERENCE": ("POSITIONAL_REFERENCE", "positional references (#n)"),
    "ARRAY_EXTRACT": ("SUBSCRIPT", "subscripts"),
    "ARRAY_SLICE": ("SLICE", "slices"),
    "STRUCT_EXTRACT": ("STRUCT_FIELD", "struct fields"),
    "COMPARE_DISTINCT_FROM": ("IS_DISTINCT_FROM", "IS DISTINCT FROM"),
    "COMPARE_NOT_DISTINCT_FROM": ("IS_NOT_DISTINCT_FROM", "IS NOT DISTINCT FROM"),
    "VALUE_CONSTANT": ("CONSTANT", "constants"),
    "list_value": ("LIST_LITERAL", "list literals"),
    "struct_pack": ("STRUCT_LITERAL", "struct literals"),
    "row": ("ROW", "row values"),
}


def describe(node: Any) -> tuple[str, str]:
    """Return the construct code and the SQL wording of an expression node, for refusals.

    Args:
        node: A parse-tree expression.

    Returns:
        `(construct, text)`, e.g. `("LIKE", "LIKE")` or
        `("upper", "the function or operator upper")`.
    """
    if not isinstance(node, dict):
        return "EXPRESSION", "this expression"
    kind = str(node.get("type"))
    if kind == "FUNCTION":
        name = str(node.get("function_name"))
        if name in _LABELS:
            return _LABELS[name]
        return show(name), f"the function or operator {show(name)}"
    return _LABELS.get(kind, (show(kind), show(kind)))


class Kind(Enum):
    """The static type of an expression."""

    NUMBER = "number"
    STRING = "string"
    BOOLEAN = "boolean"
    NULL = "NULL"


_COLUMN_KINDS = {
    "int64": Kind.NUMBER,
    "float64": Kind.NUMBER,
    "string": Kind.STRING,
    "bool": Kind.BOOLEAN,
}


@dataclass(frozen=True, slots=True)
class ScopeEntry:
    """One relation visible in a query: its alias (folded), columns by folded name, unit column."""

    alias: str
    columns: dict[str, ColumnInfo]
    unit: str | None  # folded name of the privacy-unit column, if it has one


@dataclass(frozen=True, slots=True)
class Resolved:
    """A resolved column reference: the catalog column, its plan qualifier and relation key."""

    column: ColumnInfo
    table: str | None  # alias for qualified plans (with a source), None for single-table plans
    is_unit: bool

    @property
    def key(self) -> str:
        """The relation key the plan uses (`name` or `alias.name`)."""
        return self.column.name if self.table is None else f"{self.table}.{self.column.name}"


@dataclass(frozen=True, slots=True)
class Scope:
    """The relations a query reads, and the names they may be referred to by.

    A single-table query has one entry and unqualified plan columns; a query with a source (joins,
    pre-aggregation) has one entry per alias and every plan column is qualified by its alias.
    """

    table: TableInfo  # the leftmost table
    qualifier: str  # folded alias of the leftmost relation
    entries: tuple[ScopeEntry, ...] = ()
    qualified: bool = False
    primary_unit: str | None = None  # alias of the primary unit column (qualified scopes)
    unit: str | None = None  # the dataset's privacy unit (single-table scopes)

    def _entries(self) -> tuple[ScopeEntry, ...]:
        if self.entries:
            return self.entries
        cols = {fold(c.name): c for c in self.table.columns}
        return (ScopeEntry(self.qualifier, cols, None if self.unit is None else fold(self.unit)),)

    def lookup(self, node: dict[str, Any]) -> Resolved:
        """Resolve a COLUMN_REF node, allowing the privacy unit (marked `is_unit`).

        Raises:
            InvalidQueryError: UNKNOWN_COLUMN, AMBIGUOUS_COLUMN or UNSUPPORTED_EXPRESSION.
        """
        check_keys(
            node,
            "column reference",
            defaults={"alias": ""},
            free=frozenset({"column_names"}),
            reason="UNSUPPORTED_EXPRESSION",
        )
        names = node.get("column_names")
        if (
            not isinstance(names, list)
            or not 1 <= len(names) <= 2
            or not all(isinstance(n, str) for n in names)
        ):
            raise reject("UNSUPPORTED_EXPRESSION", "unsupported column reference")
        written = ".".join(names)
        wanted = fold(names[-1])
        entries = self._entries()
        if len(names) == 2:
            entries = tuple(e for e in entries if e.alias == fold(names[0]))
        hits = [(e, e.columns[wanted]) for e in entries if wanted in e.columns]
        if not hits:
            raise reject("UNKNOWN_COLUMN", f"unknown column {show(written)}", column=show(written))
        units = [h for h in hits if h[0].unit == wanted]
        if len(hits) > 1:
            if len(units) == len(hits):  # the unit is equal across unit joins: take the primary
                primary = [h for h in hits if h[0].alias == self.primary_unit]
                hits = primary or hits[:1]
            else:
                raise reject(
                    "AMBIGUOUS_COLUMN",
                    f"column {show(written)} exists in several tables; qualify it "
                    "(alias.column)",
                    column=show(written),
                )
        entry, col = hits[0]
        return Resolved(col, entry.alias if self.qualified else None, entry.unit == wanted)

    def resolve_ref(self, node: dict[str, Any]) -> Resolved:
        """Resolve a COLUMN_REF node to a usable column (never an identifier or the unit)."""
        r = self.lookup(node)
        if r.is_unit or r.column.grade == "identifier":
            raise reject(
                "IDENTIFIER_COLUMN",
                f"column {r.column.name} is an identifier and never appears in queries "
                "or answers",
                column=r.column.name,
            )
        return r

    def resolve(self, node: dict[str, Any]) -> ColumnInfo:
        """Resolve a COLUMN_REF node to its catalog column.

        Args:
            node: A `COLUMN_REF` node; `column_names` is `[column]` or `[table_or_alias, column]`.

        Returns:
            The catalog column (never an identifier column).

        Raises:
            InvalidQueryError: UNKNOWN_COLUMN, AMBIGUOUS_COLUMN, IDENTIFIER_COLUMN or
                UNSUPPORTED_EXPRESSION.
        """
        return self.resolve_ref(node).column


def function_keys_ok(node: dict[str, Any], what: str, *, is_operator: bool) -> None:
    """Check the keys of a FUNCTION node that the analyzer is about to accept.

    Refuses qualified names (`main.sum`), DISTINCT, FILTER, ORDER BY inside the call, named
    arguments and anything else unexpected.

    Args:
        node: A `FUNCTION` node.
        what: The construct's name, for messages.
        is_operator: Whether the node must be an operator (`a + b`) rather than a call.

    Raises:
        InvalidQueryError: UNSUPPORTED_CONSTRUCT or UNSUPPORTED_EXPRESSION.
    """
    name = node.get("function_name")
    if node.get("distinct", False) is not False:
        raise reject(
            "UNSUPPORTED_CONSTRUCT",
            f"DISTINCT inside {what} is not supported",
            construct="DISTINCT",
        )
    if node.get("filter") is not None:
        raise reject(
            "UNSUPPORTED_CONSTRUCT", f"FILTER on {what} is not supported", construct="FILTER"
        )
    if node.get("order_bys", EMPTY_ORDER) != EMPTY_ORDER:
        raise reject(
            "UNSUPPORTED_CONSTRUCT",
            f"ORDER BY inside {what} is not supported",
            construct="ORDER_BY",
        )
    if (
        node.get("schema", "") != ""
        or node.get("catalog", "") != ""
        or node.get("qualified_name") != {"path": [name]}
    ):
        raise reject(
            "UNSUPPORTED_EXPRESSION",
            f"qualified function names are not supported ({what})",
            construct="QUALIFIED_FUNCTION",
        )
    check_keys(
        node,
        what,
        defaults={
            "alias": "",
            "export_state": False,
            "is_legacy_function_call": False,
            "is_operator": is_operator,
        },
        free=frozenset(
            {
                "function_name",
                "arguments",
                "qualified_name",
                "schema",
                "catalog",
                "filter",
                "order_bys",
                "distinct",
            }
        ),
        reason="UNSUPPORTED_EXPRESSION",
    )
    args = node.get("arguments")
    if not isinstance(args, list) or not all(
        isinstance(a, dict) and set(a) == {"name", "expression"} and a["name"] == "" for a in args
    ):
        raise reject(
            "UNSUPPORTED_EXPRESSION", f"named or malformed arguments in {what}", construct="ARGS"
        )


def literal(node: dict[str, Any]) -> tuple[Literal, Kind]:
    """Translate a VALUE_CONSTANT node into a plan literal and its static type.

    Raises:
        InvalidQueryError: INVALID_LITERAL (integer beyond 64 bits, non-finite decimal),
            QUERY_TOO_LARGE (string over 1,000 characters) or UNSUPPORTED_EXPRESSION (other kinds).
    """
    check_keys(
        node,
        "literal",
        defaults={"alias": ""},
        free=frozenset({"literal"}),
        reason="UNSUPPORTED_EXPRESSION",
    )
    lit = node.get("literal")
    if not isinstance(lit, dict) or set(lit) != {"kind", "text"}:
        raise reject("UNSUPPORTED_EXPRESSION", "unsupported literal", construct="LITERAL")
    kind, text = lit["kind"], lit["text"]
    if not isinstance(text, str):
        raise reject("UNSUPPORTED_EXPRESSION", "unsupported literal", construct="LITERAL")
    if kind == "INTEGER":
        if not _INTEGER_TEXT.fullmatch(text):
            raise _bad_number(text)
        value = int(text.replace("_", ""))
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise _bad_number(text)
        return Literal(value), Kind.NUMBER
    if kind == "NUMERIC":
        digits = any(c.isdigit() for c in text)
        if len(text) > 100 or not digits or not _NUMERIC_TEXT.fullmatch(text):
            raise _bad_number(text)
        number = float(text.replace("_", ""))
        if not math.isfinite(number):
            raise _bad_number(text)
        return Literal(number), Kind.NUMBER
    if kind == "STRING":
        if len(text) > MAX_STRING_LITERAL:
            raise reject(
                "QUERY_TOO_LARGE",
                f"string literals are limited to {MAX_STRING_LITERAL} characters",
                limit=str(MAX_STRING_LITERAL),
            )
        return Literal(text), Kind.STRING
    if kind == "BOOLEAN" and text in ("true", "false"):
        return Literal(text == "true"), Kind.BOOLEAN
    if kind == "NULL_LITERAL":
        return Literal(None), Kind.NULL
    raise reject(
        "UNSUPPORTED_EXPRESSION",
        f"{show(str(kind))} literals are not supported",
        construct=f"LITERAL_{show(str(kind))}",
    )


def _bad_number(text: str) -> Exception:
    return reject(
        "INVALID_LITERAL",
        f"the number {show(text)} is out of range (integers must fit in 64 bits, "
        "decimals must be finite)",
    )


def column_kind(column: ColumnInfo) -> Kind:
    """Return the static type of a catalog column."""
    return _COLUMN_KINDS[column.type]


def check_bounded(column: ColumnInfo, what: str) -> None:
    """Refuse SUM/AVG over a column without a numeric type and finite bounds (UNBOUNDED_COLUMN).

    Args:
        column: The aggregated catalog column.
        what: The aggregate's name, for the message.
    """
    if column.type not in ("int64", "float64"):
        raise reject(
            "UNBOUNDED_COLUMN",
            f"{what} needs a numeric column with declared bounds; column {column.name} is "
            f"{column.type}",
            column=column.name,
        )
    lo, hi = column.lower, column.upper
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise reject(
            "UNBOUNDED_COLUMN",
            f"{what} needs declared bounds; column {column.name} has none",
            column=column.name,
        )


def forbid_nested(part: Any, *, scalar: bool = False, allow_subqueries: bool = False) -> None:
    """Refuse subqueries and window functions anywhere in a clause, before anything else.

    Args:
        part: A clause of the parse tree (select list, WHERE, GROUP BY), or None.
        scalar: refuse subqueries as SCALAR_SUBQUERY (select list, GROUP BY).
        allow_subqueries: leave subqueries to the WHERE converter (IN/EXISTS semi-joins).
    """
    for obj in walk(part):
        kind = obj.get("type")
        if kind == "SUBQUERY" and not allow_subqueries:
            if scalar:
                raise reject(
                    "SCALAR_SUBQUERY",
                    "subqueries in the select list or GROUP BY can pick out one row's value; "
                    "they are not allowed",
                    construct="SUBQUERY",
                )
            raise reject(
                "UNSUPPORTED_CONSTRUCT", "subqueries are not supported yet", construct="SUBQUERY"
            )
        if isinstance(kind, str) and kind.startswith("WINDOW_"):
            raise reject(
                "UNSUPPORTED_CONSTRUCT", "window functions are not supported", construct="WINDOW"
            )


def scope_entry(alias: str, table: TableInfo, dataset: DatasetInfo) -> ScopeEntry:
    """The scope entry of one table under `alias` (a public table has no unit)."""
    unit = None if table.public else fold(dataset.privacy_unit)
    return ScopeEntry(alias, {fold(c.name): c for c in table.columns}, unit)


def scope_of(source: Source, rel: Relation, dataset: DatasetInfo) -> Scope:
    """A qualified scope over a source's relation: one entry per alias."""
    by_alias: dict[str, dict[str, ColumnInfo]] = {}
    for k, col in rel.columns.items():
        alias, _, _ = k.partition(".")
        by_alias.setdefault(alias, {})[fold(col.name)] = col
    unit = fold(dataset.privacy_unit)
    entries = tuple(
        ScopeEntry(a, cols, unit if f"{a}.{dataset.privacy_unit}" in rel.units else None)
        for a, cols in by_alias.items()
    )
    first = dataset.table(leftmost_table(source))
    assert first is not None
    primary = rel.unit.partition(".")[0]
    return Scope(first, primary, entries, True, primary)
