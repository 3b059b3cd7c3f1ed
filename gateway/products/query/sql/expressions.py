"""Expression translation: DuckDB parse-tree expressions to typed plan nodes.

Accepted: column references, literals (integer, finite decimal, string, boolean, NULL), comparisons,
AND / OR / NOT, [NOT] IN (literal list), [NOT] BETWEEN, IS [NOT] NULL, arithmetic (+ - * / % and
unary minus), searched and simple CASE, CAST / TRY_CAST / `::` (always run as TRY_CAST), and the
scalar functions of the shared allowlist `sandbox.plans.functions` (refused otherwise with
UNSUPPORTED_FUNCTION naming the function). Everything else is refused, naming the construct.

Expressions are type-checked against the catalog (number / string / boolean), so that the sandbox
never has to cast a column value (a failing cast is a data-dependent error that quotes the value),
and `/` and `%` need a non-zero literal divisor (DuckDB raises on division by zero).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.products.query.sql.nodes import (
    Kind,
    Scope,
    column_kind,
    describe,
    function_keys_ok,
    literal,
)
from gateway.products.query.sql.parse import aggregate_function_names
from gateway.products.query.sql.tree import MAX_EXPRESSION_DEPTH, MAX_IN_LIST, check_keys, reject, show
from sandbox.plans import functions
from sandbox.plans.bounds import literal_value
from sandbox.protocol.messages import (
    Between,
    Binary,
    Case,
    Cast,
    Column,
    ColumnType,
    Expr,
    Func,
    InList,
    IsNull,
    Literal,
    Unary,
)

__all__ = ["KIND_NAMES", "Converter", "convert_expression", "convert_filter"]

KIND_NAMES = {Kind.NUMBER: "num", Kind.STRING: "str", Kind.BOOLEAN: "bool", Kind.NULL: "null"}
_FROM_NAME = {v: k for k, v in KIND_NAMES.items()}
_CAST_TYPES: dict[str, ColumnType] = {
    "tinyint": "int64", "smallint": "int64", "integer": "int64", "int": "int64", "bigint": "int64",
    "int1": "int64", "int2": "int64", "int4": "int64", "int8": "int64", "long": "int64",
    "short": "int64", "signed": "int64",
    "double": "float64", "float": "float64", "real": "float64", "float4": "float64",
    "float8": "float64", "decimal": "float64", "numeric": "float64",
    "varchar": "string", "text": "string", "string": "string", "char": "string", "bpchar": "string",
    "boolean": "bool", "bool": "bool", "logical": "bool",
}  # fmt: skip
_CAST_KIND = {"int64": Kind.NUMBER, "float64": Kind.NUMBER, "string": Kind.STRING, "bool": Kind.BOOLEAN}

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


class Converter:
    """Translate one expression, tracking types and plan depth.

    Subclasses change how column references and aggregate calls are read (HAVING reads released
    outputs); `where` names the clause in refusals.
    """

    where = "filters"
    extra_aggregates: frozenset[str] = frozenset({"var"})  # ours, unknown to DuckDB

    def __init__(self, scope: Scope, subquery: SubqueryHook | None = None) -> None:
        self.scope = scope
        self.subquery = subquery

    def column_ref(self, node: dict[str, Any]) -> tuple[Expr, Kind]:
        """A column reference: a catalog column of the scope."""
        ref = self.scope.resolve_ref(node)
        return Column(ref.column.name, ref.table), column_kind(ref.column)

    def aggregate_call(self, node: dict[str, Any]) -> tuple[Expr, Kind] | None:
        """An aggregate call inside an expression; None refuses it."""
        return None

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
            expr, kind = self.column_ref(node)
            return expr, kind, 1
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
        if t == "CASE_EXPR":
            return self._case(node, level)
        if t == "OPERATOR_CAST":
            return self._cast(node, level)
        if t == "OPERATOR_COALESCE":
            children = self._children(node, "COALESCE", minimum=1)
            return self._call(functions.FUNCTIONS["COALESCE"], children, level)
        raise _unsupported(node, self.where)

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
                    raise _unsupported(child, self.where)
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
        raw = str(name)
        if node.get("is_operator") is True and name in _ARITHMETIC and (
            arity == 2 or (name == "-" and arity == 1)
        ):
            return self._arithmetic(node, level)
        if node.get("is_operator") is False and (
            raw.lower() in aggregate_function_names() or raw.lower() in self.extra_aggregates
        ):
            found = self.aggregate_call(node)
            if found is None:
                raise _unsupported(node, self.where)
            return found[0], found[1], 1
        if raw in ("list_value", "struct_pack", "row") or (raw in _ARITHMETIC and arity == 1):
            raise _unsupported(node, self.where)
        negated = raw in functions.NEGATED
        spec = functions.lookup(functions.NEGATED.get(raw, raw))
        operator_only = raw in ("||", "~~", "~~*", "!~~", "!~~*", "**", "^")
        if spec is None or (operator_only and node.get("is_operator") is not True):
            construct, text = describe(node)
            raise reject(
                "UNSUPPORTED_FUNCTION",
                f"{text} is not on the list of supported functions",
                function=show(construct),
            )
        function_keys_ok(node, f"function {show(raw)}", is_operator=node.get("is_operator") is True)
        assert isinstance(args, list)
        expr, kind, depth = self._call(spec, [a["expression"] for a in args], level)
        if negated:
            return Unary("NOT", expr), Kind.BOOLEAN, depth + 1
        return expr, kind, depth

    def _call(
        self, spec: functions.FunctionSpec, args: list[Any], level: int
    ) -> tuple[Expr, Kind, int]:
        n = len(args)
        if n < spec.min_args or (spec.max_args is not None and n > spec.max_args):
            want = (
                f"{spec.min_args}" if spec.max_args == spec.min_args
                else f"{spec.min_args} or more" if spec.max_args is None
                else f"{spec.min_args} to {spec.max_args}"
            )
            raise reject(
                "UNSUPPORTED_EXPRESSION",
                f"{spec.name} takes {want} arguments, not {n}",
                construct=spec.name,
            )
        converted = []
        for i, a in enumerate(args):
            expr, kind, depth = self.convert(a, level)
            if i in spec.literal_args and literal_value(expr) is None:
                raise reject(
                    "UNSUPPORTED_EXPRESSION",
                    f"argument {i + 1} of {spec.name} must be a literal",
                    construct=spec.name,
                )
            want = spec.kind_of(i)
            if want not in ("any", "same"):
                _require(spec.name, kind, _FROM_NAME[want])
            converted.append((expr, kind, depth))
        if spec.check_literals is not None:
            problem = spec.check_literals([literal_value(e) for e, _, _ in converted])
            if problem:
                raise reject("UNSUPPORTED_EXPRESSION", problem, construct=spec.name)
        if spec.result == "same":
            kinds = {k for _, k, _ in converted if k is not Kind.NULL}
            if len(kinds) > 1:
                raise _mismatch(spec.name, *sorted(kinds, key=lambda k: k.value))
            result = kinds.pop() if kinds else Kind.NULL
        else:
            result = _FROM_NAME[spec.result]
        depth = 1 + max((d for _, _, d in converted), default=0)
        return Func(spec.name, tuple(e for e, _, _ in converted)), result, depth

    def _case(self, node: dict[str, Any], level: int) -> tuple[Expr, Kind, int]:
        check_keys(
            node,
            "CASE",
            defaults={"alias": ""},
            free=frozenset({"case_checks", "else_expr"}),
            reason="UNSUPPORTED_EXPRESSION",
        )
        checks = node.get("case_checks")
        if not isinstance(checks, list) or not checks or len(checks) > MAX_IN_LIST:
            raise reject("UNSUPPORTED_EXPRESSION", "malformed CASE expression", construct="CASE")
        whens: list[tuple[Expr, Expr]] = []
        kinds: list[Kind] = []
        depth = 0
        for check in checks:
            if not isinstance(check, dict) or set(check) != {"when_expr", "then_expr"}:
                raise reject("UNSUPPORTED_EXPRESSION", "malformed CASE expression", construct="CASE")
            cond, ck, cd = self.convert(check["when_expr"], level)
            _require("CASE WHEN", ck, Kind.BOOLEAN)
            value, vk, vd = self.convert(check["then_expr"], level)
            whens.append((cond, value))
            kinds.append(vk)
            depth = max(depth, cd, vd)
        else_expr: Expr | None = None
        raw_else = node.get("else_expr")
        if raw_else is not None:
            else_expr, ek, ed = self.convert(raw_else, level)
            # DuckDB writes a missing ELSE as ELSE NULL
            if isinstance(else_expr, Literal) and else_expr.value is None:
                else_expr = None
            else:
                kinds.append(ek)
                depth = max(depth, ed)
        present = {k for k in kinds if k is not Kind.NULL}
        if len(present) > 1:
            raise _mismatch("CASE", *sorted(present, key=lambda k: k.value))
        kind = present.pop() if present else Kind.NULL
        return Case(tuple(whens), else_expr), kind, depth + 1

    def _cast(self, node: dict[str, Any], level: int) -> tuple[Expr, Kind, int]:
        check_keys(
            node,
            "CAST",
            defaults={"alias": ""},
            free=frozenset({"child", "try_cast", "type_expr"}),
            reason="UNSUPPORTED_EXPRESSION",
        )
        type_expr = node.get("type_expr")
        name = type_expr.get("type_name") if isinstance(type_expr, dict) else None
        params = type_expr.get("children", []) if isinstance(type_expr, dict) else None
        target = _CAST_TYPES.get(str(name).lower()) if isinstance(name, str) else None
        if target is None or (params and target != "float64") or (
            isinstance(type_expr, dict)
            and type_expr.get("schema", "") not in ("", None)
        ):
            raise reject(
                "UNSUPPORTED_EXPRESSION",
                f"casts to {show(str(name))} are not supported; use BIGINT, DOUBLE, VARCHAR or BOOLEAN",
                construct="CAST",
            )
        operand, _, depth = self.convert(node.get("child"), level)
        return Cast(operand, target, bool(node.get("try_cast"))), _CAST_KIND[target], depth + 1

    def _arithmetic(self, node: dict[str, Any], level: int) -> tuple[Expr, Kind, int]:
        name = node.get("function_name")
        args = node.get("arguments")
        assert isinstance(args, list)
        arity = len(args)
        function_keys_ok(node, f"operator {name}", is_operator=True)
        op = str(name)
        converted = [self.convert(a["expression"], level) for a in args]
        for _, kind, _ in converted:
            _require(op, kind, Kind.NUMBER)
        if arity == 1:
            expr, _, depth = converted[0]
            return Unary("-", expr), Kind.NUMBER, depth + 1
        (left, _, ld), (right, _, rd) = converted
        divisor = literal_value(right)
        if op in _DIVISIONS and not (
            isinstance(divisor, int | float) and not isinstance(divisor, bool) and divisor != 0
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


def _unsupported(node: dict[str, Any], where: str = "filters") -> Exception:
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
        "UNSUPPORTED_EXPRESSION", f"{text} cannot be used in {where}", construct=construct
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
    expr, kind, _ = Converter(scope, subquery).convert(node, 0)
    _require("WHERE", kind, Kind.BOOLEAN)
    return expr


def convert_expression(node: Any, scope: Scope, where: str = "expressions") -> tuple[Expr, Kind]:
    """Translate a scalar expression (aggregate argument, group key) into a typed plan expression."""
    conv = Converter(scope)
    conv.where = where
    expr, kind, _ = conv.convert(node, 0)
    return expr, kind
