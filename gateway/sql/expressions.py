"""WHERE translation: DuckDB parse-tree expressions to typed plan nodes.

Accepted: column references, literals (integer, finite decimal, string, boolean, NULL), comparisons,
AND / OR / NOT, [NOT] IN (literal list), [NOT] BETWEEN, IS [NOT] NULL, arithmetic (+ - * / % and
unary minus). Everything else is refused, naming the construct.

Expressions are type-checked against the catalog (number / string / boolean), so that the sandbox
never has to cast a column value (a failing cast is a data-dependent error that quotes the value),
and `/` and `%` need a non-zero literal divisor (DuckDB raises on division by zero).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.sql.nodes import (
    Kind,
    Scope,
    column_kind,
    describe,
    function_keys_ok,
    literal,
)
from gateway.sql.tree import MAX_EXPRESSION_DEPTH, MAX_IN_LIST, check_keys, reject
from sandbox.protocol import Between, Binary, Column, Expr, InList, IsNull, Literal, Unary

__all__ = ["convert_filter"]

_COMPARISONS = {
    "COMPARE_EQUAL": "=",
    "COMPARE_NOTEQUAL": "<>",
    "COMPARE_LESSTHAN": "<",
    "COMPARE_LESSTHANOREQUALTO": "<=",
    "COMPARE_GREATERTHAN": ">",
    "COMPARE_GREATERTHANOREQUALTO": ">=",
}
_CONJUNCTIONS = {"CONJUNCTION_AND": "AND", "CONJUNCTION_OR": "OR"}
_ARITHMETIC = frozenset({"+", "-", "*", "/", "%"})
_DIVISIONS = frozenset({"/", "%"})


def _mismatch(what: str, *kinds: Kind) -> Exception:
    names = " and ".join(k.value for k in kinds)
    return reject("TYPE_MISMATCH", f"{what} cannot combine {names}", construct=what)


def _comparable(what: str, a: Kind, b: Kind) -> None:
    if a is not b and Kind.NULL not in (a, b):
        raise _mismatch(what, a, b)


def _require(what: str, kind: Kind, *allowed: Kind) -> None:
    if kind is not Kind.NULL and kind not in allowed:
        raise reject(
            "TYPE_MISMATCH",
            f"{what} needs a {allowed[0].value}, not a {kind.value}",
            construct=what,
        )


def _balanced(op: str, items: list[tuple[Expr, int]]) -> tuple[Expr, int]:
    """Join AND/OR operands into a balanced tree (AND and OR are associative)."""
    if len(items) == 1:
        return items[0]
    mid = len(items) // 2
    left, ld = _balanced(op, items[:mid])
    right, rd = _balanced(op, items[mid:])
    return Binary(op, left, right), 1 + max(ld, rd)


SubqueryHook = Callable[[dict[str, Any], bool], Expr]
"""Turns a SUBQUERY node (and whether it is negated) into a plan node, or refuses it."""


class _Converter:
    """Translate one WHERE expression, tracking types and plan depth."""

    def __init__(self, scope: Scope, subquery: SubqueryHook | None = None) -> None:
        self.scope = scope
        self.subquery = subquery

    def convert(self, node: Any, level: int) -> tuple[Expr, Kind, int]:
        """Return (plan node, static type, plan depth) for a parse-tree expression."""
        if level > 2 * MAX_EXPRESSION_DEPTH:
            raise _too_deep()
        if not isinstance(node, dict):
            raise reject("UNSUPPORTED_EXPRESSION", "malformed expression")
        result = self._dispatch(node, str(node.get("type")), level + 1)
        if result[2] > MAX_EXPRESSION_DEPTH:
            raise _too_deep()
        return result

    def _dispatch(self, node: dict[str, Any], t: str, level: int) -> tuple[Expr, Kind, int]:
        if t == "COLUMN_REF":
            ref = self.scope.resolve_ref(node)
            return Column(ref.column.name, ref.table), column_kind(ref.column), 1
        if t == "SUBQUERY" and self.subquery is not None:
            return self.subquery(node, False), Kind.BOOLEAN, 1
        if t == "VALUE_CONSTANT":
            lit, kind = literal(node)
            return lit, kind, 1
        if t in _COMPARISONS:
            check_keys(
                node,
                "comparison",
                defaults={"alias": ""},
                free=frozenset({"left", "right"}),
                reason="UNSUPPORTED_EXPRESSION",
            )
            op = _COMPARISONS[t]
            left, lk, ld = self.convert(node.get("left"), level)
            right, rk, rd = self.convert(node.get("right"), level)
            _comparable(op, lk, rk)
            return Binary(op, left, right), Kind.BOOLEAN, 1 + max(ld, rd)
        if t in _CONJUNCTIONS:
            op = _CONJUNCTIONS[t]
            items: list[tuple[Expr, int]] = []
            for child in self._children(node, op, minimum=2):
                expr, kind, depth = self.convert(child, level)
                _require(op, kind, Kind.BOOLEAN)
                items.append((expr, depth))
            expr, depth = _balanced(op, items)
            return expr, Kind.BOOLEAN, depth
        if t == "OPERATOR_NOT":
            (child,) = self._children(node, "NOT", minimum=1, maximum=1)
            inner = child.get("type") if isinstance(child, dict) else None
            if inner == "COMPARE_IN":
                return self._in_list(child, level + 1, negated=True)
            if inner == "COMPARE_BETWEEN":
                return self._between(child, level + 1, negated=True)
            if inner == "SUBQUERY" and self.subquery is not None:
                return self.subquery(child, True), Kind.BOOLEAN, 1
            expr, kind, depth = self.convert(child, level)
            _require("NOT", kind, Kind.BOOLEAN)
            return Unary("NOT", expr), Kind.BOOLEAN, depth + 1
        if t in ("OPERATOR_IS_NULL", "OPERATOR_IS_NOT_NULL"):
            (child,) = self._children(node, "IS NULL", minimum=1, maximum=1)
            expr, _, depth = self.convert(child, level)
            return IsNull(expr, negated=t == "OPERATOR_IS_NOT_NULL"), Kind.BOOLEAN, depth + 1
        if t == "COMPARE_IN":
            return self._in_list(node, level, negated=False)
        if t == "COMPARE_BETWEEN":
            return self._between(node, level, negated=False)
        if t == "FUNCTION":
            return self._function(node, level)
        raise _unsupported(node)

    def _children(
        self, node: dict[str, Any], what: str, *, minimum: int, maximum: int | None = None
    ) -> list[Any]:
        check_keys(
            node,
            what,
            defaults={"alias": ""},
            free=frozenset({"children"}),
            reason="UNSUPPORTED_EXPRESSION",
        )
        children = node.get("children")
        if (
            not isinstance(children, list)
            or len(children) < minimum
            or (maximum is not None and len(children) > maximum)
        ):
            raise reject("UNSUPPORTED_EXPRESSION", f"malformed {what} expression")
        return children

    def _in_list(
        self, node: dict[str, Any], level: int, *, negated: bool
    ) -> tuple[Expr, Kind, int]:
        children = self._children(node, "IN", minimum=2)
        if len(children) - 1 > MAX_IN_LIST:
            raise reject(
                "QUERY_TOO_LARGE",
                f"IN lists are limited to {MAX_IN_LIST} values",
                limit=str(MAX_IN_LIST),
            )
        operand, kind, depth = self.convert(children[0], level)
        values: list[Literal] = []
        for child in children[1:]:
            if not isinstance(child, dict) or child.get("type") != "VALUE_CONSTANT":
                ctype = child.get("type") if isinstance(child, dict) else None
                if ctype == "SUBQUERY":
                    raise _unsupported(child)
                raise reject(
                    "UNSUPPORTED_EXPRESSION",
                    "IN lists may only hold literal values",
                    construct="IN",
                )
            lit, lk = literal(child)
            _comparable("IN", kind, lk)
            values.append(lit)
        return InList(operand, tuple(values), negated), Kind.BOOLEAN, depth + 1

    def _between(
        self, node: dict[str, Any], level: int, *, negated: bool
    ) -> tuple[Expr, Kind, int]:
        check_keys(
            node,
            "BETWEEN",
            defaults={"alias": ""},
            free=frozenset({"input", "lower", "upper"}),
            reason="UNSUPPORTED_EXPRESSION",
        )
        operand, k, d = self.convert(node.get("input"), level)
        low, lk, ld = self.convert(node.get("lower"), level)
        high, hk, hd = self.convert(node.get("upper"), level)
        _comparable("BETWEEN", k, lk)
        _comparable("BETWEEN", k, hk)
        return Between(operand, low, high, negated), Kind.BOOLEAN, 1 + max(d, ld, hd)

    def _function(self, node: dict[str, Any], level: int) -> tuple[Expr, Kind, int]:
        name = node.get("function_name")
        args = node.get("arguments")
        arity = len(args) if isinstance(args, list) else -1
        if not (
            node.get("is_operator") is True
            and name in _ARITHMETIC
            and (arity == 2 or (name == "-" and arity == 1))
        ):
            raise _unsupported(node)
        assert isinstance(args, list)
        function_keys_ok(node, f"operator {name}", is_operator=True)
        op = str(name)
        converted = [self.convert(a["expression"], level) for a in args]
        for _, kind, _ in converted:
            _require(op, kind, Kind.NUMBER)
        if arity == 1:
            expr, _, depth = converted[0]
            return Unary("-", expr), Kind.NUMBER, depth + 1
        (left, _, ld), (right, _, rd) = converted
        if op in _DIVISIONS and not (
            isinstance(right, Literal)
            and isinstance(right.value, int | float)
            and not isinstance(right.value, bool)
            and right.value != 0
        ):
            raise reject(
                "UNSUPPORTED_EXPRESSION",
                f"the divisor of {op} must be a non-zero number literal",
                construct="DIVISION",
            )
        return Binary(op, left, right), Kind.NUMBER, 1 + max(ld, rd)


def _too_deep() -> Exception:
    return reject(
        "QUERY_TOO_COMPLEX",
        f"expressions may be nested at most {MAX_EXPRESSION_DEPTH} levels deep",
        limit=str(MAX_EXPRESSION_DEPTH),
    )


def _unsupported(node: dict[str, Any]) -> Exception:
    t = str(node.get("type"))
    if t == "SUBQUERY":
        return reject(
            "UNSUPPORTED_CONSTRUCT", "subqueries are not supported yet", construct="SUBQUERY"
        )
    if t.startswith("WINDOW_"):
        return reject(
            "UNSUPPORTED_CONSTRUCT", "window functions are not supported", construct="WINDOW"
        )
    construct, text = describe(node)
    return reject(
        "UNSUPPORTED_EXPRESSION", f"{text} cannot be used in filters", construct=construct
    )


def convert_filter(node: Any, scope: Scope, subquery: SubqueryHook | None = None) -> Expr:
    """Translate a WHERE clause into a plan expression.

    Args:
        node: The `where_clause` parse-tree expression.
        scope: The table the query reads.

    Returns:
        The typed plan expression (a boolean condition).

    Raises:
        InvalidQueryError: UNSUPPORTED_EXPRESSION, UNSUPPORTED_CONSTRUCT, TYPE_MISMATCH,
            QUERY_TOO_LARGE, QUERY_TOO_COMPLEX, INVALID_LITERAL, UNKNOWN_COLUMN or
            IDENTIFIER_COLUMN.
    """
    expr, kind, _ = _Converter(scope, subquery).convert(node, 0)
    _require("WHERE", kind, Kind.BOOLEAN)
    return expr
