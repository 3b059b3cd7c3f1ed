"""The select list: each output a GROUP BY key or an aggregate (COUNT, SUM, AVG, VAR, STDDEV, MEDIAN, QUANTILE,
MIN, MAX) over a bounded expression, its default name, and the aggregates the plan computes."""

from __future__ import annotations

from typing import Any

from gateway.products.query.sql.expressions import convert_expression
from gateway.products.query.sql.nodes import Kind, Scope, check_bounded, describe, function_keys_ok, literal
from gateway.products.query.sql.parse import aggregate_function_names
from gateway.products.query.sql.parts import PlanParts
from gateway.products.query.sql.statement import ALIAS, unsupported
from gateway.products.query.sql.tree import EMPTY_ORDER, fold, reject, show, walk
from sandbox.plans.bounds import expression_bounds
from sandbox.protocol.messages import BOUNDED_KINDS, Aggregate, AggregateKind, Column, Expr, OutputColumn

__all__ = ["aggregate", "check_select_list", "has_aggregate"]

_AGGREGATES = {
    "count_star": AggregateKind.COUNT,
    "count": AggregateKind.COUNT_COLUMN,
    "sum": AggregateKind.SUM,
    "avg": AggregateKind.AVG,
    "mean": AggregateKind.AVG,
    "var": AggregateKind.VAR_SAMP,
    "variance": AggregateKind.VAR_SAMP,
    "var_samp": AggregateKind.VAR_SAMP,
    "var_pop": AggregateKind.VAR_POP,
    "stddev": AggregateKind.STDDEV_SAMP,
    "stddev_samp": AggregateKind.STDDEV_SAMP,
    "stddev_pop": AggregateKind.STDDEV_POP,
    "median": AggregateKind.QUANTILE,
    "quantile": AggregateKind.QUANTILE,
    "quantile_cont": AggregateKind.QUANTILE,
    "quantile_disc": AggregateKind.QUANTILE,
    "percentile_cont": AggregateKind.QUANTILE,
    "percentile_disc": AggregateKind.QUANTILE,
    "min": AggregateKind.QUANTILE,
    "max": AggregateKind.QUANTILE,
}
_FIXED_QUANTILE = {"median": 0.5, "min": 0.0, "max": 1.0}
_DEFAULT_PREFIX = {
    AggregateKind.COUNT_COLUMN: "count",
    AggregateKind.COUNT_DISTINCT_UNIT: "count_distinct",
    AggregateKind.SUM: "sum",
    AggregateKind.AVG: "avg",
    AggregateKind.VAR_POP: "var_pop",
    AggregateKind.VAR_SAMP: "var_samp",
    AggregateKind.STDDEV_POP: "stddev_pop",
    AggregateKind.STDDEV_SAMP: "stddev_samp",
    AggregateKind.QUANTILE: "quantile",
}


def check_select_list(parts: PlanParts, items: Any, scope: Scope) -> None:
    """Read the select list into `parts.outputs` (aggregates into `parts.aggregates`)."""
    if not isinstance(items, list) or not items:
        raise unsupported("SELECT_LIST", "malformed select list")
    for item in items:
        if not isinstance(item, dict):
            raise unsupported("SELECT_LIST", "malformed select list")
        alias = item.get("alias", "")
        if not isinstance(alias, str) or (alias and not ALIAS.fullmatch(alias)):
            raise reject(
                "INVALID_ALIAS",
                f"alias {show(str(alias))} is not allowed; use at most 64 letters, digits "
                "and underscores, not starting with a digit",
                alias=show(str(alias)),
            )
        parts.outputs.append(_output(parts, item, alias, scope))


def _output(parts: PlanParts, item: dict[str, Any], alias: str, scope: Scope) -> OutputColumn:
    kind = str(item.get("type"))
    if kind == "STAR":
        raise reject(
            "SELECT_STAR",
            "SELECT * would release rows; ask for aggregates such as COUNT(*)",
        )
    if kind == "COLUMN_REF":
        ref = scope.resolve_ref(item | {"alias": ""})
        col = ref.column
        for i, key in enumerate(parts.keys):
            if key.expr == Column(col.name, ref.table):
                return OutputColumn(alias or key.name, group_index=i)
        raise reject(
            "BARE_COLUMN",
            f"column {col.name} is neither in GROUP BY nor inside an aggregate; "
            "releasing it would publish rows",
            column=col.name,
        )
    if kind == "FUNCTION" and item.get("is_operator") is False:
        raw = item.get("function_name")
        if isinstance(raw, str) and _is_aggregate(fold(raw)):
            index, default = aggregate(parts, item, scope)
            return OutputColumn(alias or default, aggregate_index=index)
    if parts.keys and kind not in ("VALUE_CONSTANT",) and not has_aggregate(item):
        expr, _ = convert_expression(item | {"alias": ""}, scope, "the select list")
        for i, key in enumerate(parts.keys):
            if key.expr == expr:
                return OutputColumn(alias or key.name, group_index=i)
        raise reject(
            "BARE_COLUMN",
            "this output is neither a GROUP BY key nor an aggregate; releasing it would "
            "publish rows",
            construct="OUTPUT_EXPRESSION",
        )
    if kind == "FUNCTION" and not has_aggregate(item):
        convert_expression(item | {"alias": ""}, scope, "the select list")  # names the function
    construct, text = describe(item)
    raise reject(
        "UNSUPPORTED_EXPRESSION",
        f"{text} cannot be used in the select list; select group keys and aggregates",
        construct=construct,
    )


def aggregate(parts: PlanParts, item: dict[str, Any], scope: Scope) -> tuple[int, str]:
    """Add (or find) the aggregate of a call in `parts`; return its index and default output name."""
    raw = item.get("function_name")
    name = fold(raw) if isinstance(raw, str) else ""
    if name not in _AGGREGATES:
        shown = "count(*)" if name == "count_star" else show(name)
        raise reject(
            "UNSUPPORTED_AGGREGATE",
            f"the aggregate {shown} is not supported; use COUNT, SUM, AVG, VAR, STDDEV, "
            "MEDIAN, QUANTILE, MIN or MAX",
            function=show(name),
        )
    kind = _AGGREGATES[name]
    shown = "COUNT(*)" if kind is AggregateKind.COUNT else name.upper()
    node = item | {"alias": ""}
    order_arg: Any = None
    if name in ("percentile_cont", "percentile_disc", "quantile_cont", "quantile_disc"):
        orders = node.get("order_bys", EMPTY_ORDER)
        if orders != EMPTY_ORDER:
            order_arg = _within_group(orders, shown)
            node = node | {"order_bys": EMPTY_ORDER}
    distinct = node.get("distinct") is True
    if distinct and name == "count":
        node = node | {"distinct": False}
    function_keys_ok(node, shown, is_operator=False)
    args = [a["expression"] for a in node["arguments"]]
    if order_arg is not None:
        args = [order_arg, *args]
    if distinct and name == "count":
        return _count_distinct(parts, args, scope)
    arg: Expr | None = None
    quantile: float | None = _FIXED_QUANTILE.get(name)
    if kind is AggregateKind.COUNT:
        if args:
            raise reject("UNSUPPORTED_EXPRESSION", "COUNT(*) takes no argument")
    else:
        wanted = 2 if kind is AggregateKind.QUANTILE and quantile is None else 1
        if len(args) != wanted:
            raise reject(
                "UNSUPPORTED_EXPRESSION",
                f"{shown} takes exactly {wanted} argument{'s' if wanted > 1 else ''}",
            )
        if wanted == 2:
            quantile = _quantile_literal(args[1], shown)
        arg = _aggregate_argument(args[0], kind, shown, scope)
    lower = upper = None
    if kind in BOUNDED_KINDS:
        assert arg is not None
        derived = expression_bounds(arg, parts.columns())
        if derived is None:
            raise reject(
                "UNBOUNDED_EXPRESSION",
                f"the argument of {shown} has no finite bounds; add CLAMP(expr, lo, hi)",
                construct="AGGREGATE_ARGUMENT",
                suggestion="CLAMP(expr, lo, hi)",
            )
        lower, upper = derived[0], derived[1]
        _refuse_constant(kind, shown, lower, upper)
    aggregate = Aggregate(kind, arg, 1.0, lower, upper, quantile)
    default = "count" if arg is None else _default_name(kind, arg, name)
    return parts.add(aggregate), default


def _within_group(orders: Any, shown: str) -> Any:
    items = orders.get("orders") if isinstance(orders, dict) else None
    if not isinstance(items, list) or len(items) != 1 or not isinstance(items[0], dict):
        raise reject("UNSUPPORTED_EXPRESSION", f"{shown} WITHIN GROUP needs one ORDER BY expression")
    order = items[0]
    if order.get("type") not in ("ORDER_DEFAULT", "ASCENDING") or order.get(
        "null_order", "ORDER_DEFAULT"
    ) != "ORDER_DEFAULT":
        raise reject(
            "UNSUPPORTED_EXPRESSION",
            f"{shown} WITHIN GROUP supports only ascending order",
            construct="WITHIN_GROUP",
        )
    return order.get("expression")


def _count_distinct(parts: PlanParts, args: list[Any], scope: Scope) -> tuple[int, str]:
    unit = parts.dataset.privacy_unit
    ok = (
        len(args) == 1
        and isinstance(args[0], dict)
        and args[0].get("type") == "COLUMN_REF"
        and isinstance(args[0].get("column_names"), list)
        and 1 <= len(args[0]["column_names"]) <= 2
        and fold(str(args[0]["column_names"][-1])) == fold(unit)
        and (len(args[0]["column_names"]) == 1 or fold(str(args[0]["column_names"][0])) == scope.qualifier)
        and args[0].get("alias", "") == ""
    )
    if not ok:
        raise reject(
            "UNSUPPORTED_CONSTRUCT",
            f"COUNT(DISTINCT ...) is supported only over the privacy unit {unit} (the number "
            "of units); other distinct counts have unbounded sensitivity",
            construct="DISTINCT",
        )
    index = parts.add(Aggregate(AggregateKind.COUNT_DISTINCT_UNIT))
    return index, f"count_distinct_{unit}"


def _aggregate_argument(
    node: Any, kind: AggregateKind, shown: str, scope: Scope
) -> Expr:
    if isinstance(node, dict) and node.get("type") == "COLUMN_REF" and kind in BOUNDED_KINDS:
        column = scope.resolve(node)
        if column.type != "bool":
            check_bounded(column, shown)
    expr, ekind = convert_expression(node, scope, f"the argument of {shown}")
    if kind in BOUNDED_KINDS and ekind not in (Kind.NUMBER, Kind.BOOLEAN):
        raise reject(
            "TYPE_MISMATCH",
            f"{shown} needs a number or boolean argument, not a {ekind.value}",
            construct=shown,
        )
    return expr


def _refuse_constant(kind: AggregateKind, shown: str, lower: float, upper: float) -> None:
    """Refuse an aggregate whose value is known without the data: the argument's bounds are one point, so
    MEDIAN/QUANTILE/MIN/MAX and AVG are that point, VAR and STDDEV are 0, and SUM of a constant 0 is 0.
    (SUM of another constant c is c times the row count: data, and priced like any sum.)"""
    if lower != upper:
        return
    if kind is AggregateKind.SUM and lower != 0:
        return
    raise reject(
        "CONSTANT_AGGREGATE",
        f"the argument of {shown} is always {lower:g} (its bounds are [{lower:g}, {upper:g}]), so the "
        "answer does not depend on the data; remove it, or aggregate an expression over a column",
        construct="AGGREGATE_ARGUMENT",
    )


def _is_aggregate(name: str) -> bool:
    return name in _AGGREGATES or name in aggregate_function_names()


def has_aggregate(node: Any) -> bool:
    return any(
        o.get("type") == "FUNCTION"
        and o.get("is_operator") is False
        and isinstance(o.get("function_name"), str)
        and _is_aggregate(fold(o["function_name"]))
        for o in walk(node)
    )


def _default_name(kind: AggregateKind, arg: Expr, name: str) -> str:
    prefix = name if kind is AggregateKind.QUANTILE else _DEFAULT_PREFIX[kind]
    if isinstance(arg, Column):
        return f"{prefix}_{arg.name}"
    return prefix


def _quantile_literal(node: Any, shown: str) -> float:
    value: object = None
    if isinstance(node, dict) and node.get("type") == "VALUE_CONSTANT":
        value = literal(node)[0].value
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise reject(
            "UNSUPPORTED_EXPRESSION",
            f"the quantile of {shown} must be a number literal in [0, 1]",
            construct="QUANTILE",
        )
    return float(value)
