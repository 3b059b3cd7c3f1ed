"""HAVING, ORDER BY and LIMIT/OFFSET: read into the post-processing the gateway applies to the released values
(`gateway.products.query.postprocess`); their names are outputs or group keys, their aggregates released values."""

from __future__ import annotations

from typing import Any

from gateway.products.query.postprocess import OrderItem, slot_key
from gateway.products.query.sql.expressions import Converter
from gateway.products.query.sql.nodes import Kind, Scope, literal
from gateway.products.query.sql.parts import PlanParts
from gateway.products.query.sql.select_list import aggregate
from gateway.products.query.sql.statement import unsupported
from gateway.products.query.sql.tree import check_keys, fold, reject
from sandbox.plans.relation import key as relation_key
from sandbox.protocol.messages import Column, Expr, OutputColumn

__all__ = ["MAX_LIMIT", "having", "post_modifiers"]

MAX_LIMIT = 1_000_000


def having(parts: PlanParts, node: Any, scope: Scope) -> Expr:
    """The HAVING condition over released values (outputs, group keys, aggregates)."""
    conv = OutputConverter(scope, parts)
    expr, kind, _ = conv.convert(node, 0)
    if kind not in (Kind.BOOLEAN, Kind.NULL):
        raise reject("TYPE_MISMATCH", "HAVING needs a boolean condition", construct="HAVING")
    return expr


def post_modifiers(
    parts: PlanParts, modifiers: list[dict[str, Any]], scope: Scope
) -> tuple[tuple[OrderItem, ...], int | None, int]:
    """ORDER BY items, LIMIT and OFFSET (0 when absent) of the query's modifiers."""
    order: list[OrderItem] = []
    limit: int | None = None
    offset = 0
    for mod in modifiers:
        if mod["type"] == "ORDER_MODIFIER":
            check_keys(mod, "ORDER BY", free=frozenset({"orders"}))
            for item in mod.get("orders") or []:
                order.append(_order_item(parts, item, scope))
            continue
        check_keys(
            mod, "LIMIT", free=frozenset({"limit", "offset"}), defaults={"limit_type": "ROW_COUNT"}
        )
        if mod.get("limit") is not None:
            limit = _count_literal(mod["limit"], "LIMIT")
        if mod.get("offset") is not None:
            offset = _count_literal(mod["offset"], "OFFSET")
    return tuple(order), limit, offset


def _order_item(parts: PlanParts, item: Any, scope: Scope) -> OrderItem:
    if not isinstance(item, dict):
        raise unsupported("ORDER_BY", "malformed ORDER BY")
    direction = item.get("type")
    nulls = item.get("null_order", "ORDER_DEFAULT")
    if direction not in ("ORDER_DEFAULT", "ASCENDING", "DESCENDING") or nulls not in (
        "ORDER_DEFAULT", "NULLS FIRST", "NULLS LAST", "NULLS_FIRST", "NULLS_LAST"
    ):
        raise unsupported("ORDER_BY", "unsupported ORDER BY direction")
    expr = item.get("expression")
    slot: str | None = None
    if isinstance(expr, dict) and expr.get("type") == "VALUE_CONSTANT":
        lit, _ = literal(expr)
        if isinstance(lit.value, bool) or not isinstance(lit.value, int) or not (
            1 <= lit.value <= len(parts.outputs)
        ):
            raise reject(
                "UNSUPPORTED_EXPRESSION",
                "ORDER BY positions must name an output column (1 to the number of outputs)",
                construct="ORDER_BY",
            )
        out = parts.outputs[lit.value - 1]
        slot = _slot(out)
    else:
        conv = OutputConverter(scope, parts)
        converted, _, _ = conv.convert(expr, 0)
        if not isinstance(converted, Column):
            raise reject(
                "UNSUPPORTED_EXPRESSION",
                "ORDER BY takes output names, positions, group keys or aggregates",
                construct="ORDER_BY",
            )
        slot = converted.name
    nulls_first = None if nulls == "ORDER_DEFAULT" else nulls.replace("_", " ") == "NULLS FIRST"
    return OrderItem(slot, direction == "DESCENDING", nulls_first)


class OutputConverter(Converter):
    """Reads HAVING / ORDER BY: names are outputs or group keys; aggregates are released values."""

    where = "HAVING or ORDER BY"

    def __init__(self, scope: Scope, parts: PlanParts) -> None:
        super().__init__(scope)
        self.parts = parts

    def column_ref(self, node: dict[str, Any]) -> tuple[Expr, Kind]:
        names = node.get("column_names")
        if isinstance(names, list) and len(names) == 1 and isinstance(names[0], str):
            for out in self.parts.outputs:
                if fold(out.name) == fold(names[0]):
                    return Column(_slot(out)), self._kind(out)
        ref = self.scope.resolve_ref(node)
        col = ref.column
        for i, key in enumerate(self.parts.keys):
            if key.expr == Column(col.name, ref.table):
                return Column(slot_key(i)), _KIND_OF_TYPE[col.type]
        raise reject(
            "BARE_COLUMN",
            f"column {col.name} in HAVING or ORDER BY is neither an output nor a GROUP BY key",
            column=col.name,
        )

    def aggregate_call(self, node: dict[str, Any]) -> tuple[Expr, Kind] | None:
        index, _ = aggregate(self.parts, node, self.scope)
        return Column(f"a{index}"), Kind.NUMBER

    def _kind(self, out: OutputColumn) -> Kind:
        if out.aggregate_index is not None:
            return Kind.NUMBER
        assert out.group_index is not None
        key = self.parts.keys[out.group_index]
        if key.domain is None and isinstance(key.expr, Column):  # partition selection: a column
            col = self.parts.columns().column(relation_key(key.expr))
            if col is not None:
                return _KIND_OF_TYPE[col.type]
        values = key.domain or ()
        if all(isinstance(v, bool) for v in values):
            return Kind.BOOLEAN
        if all(isinstance(v, str) for v in values):
            return Kind.STRING
        return Kind.NUMBER


_KIND_OF_TYPE = {"int64": Kind.NUMBER, "float64": Kind.NUMBER, "string": Kind.STRING, "bool": Kind.BOOLEAN}


def _slot(out: OutputColumn) -> str:
    if out.group_index is not None:
        return slot_key(out.group_index)
    return f"a{out.aggregate_index}"


def _count_literal(node: Any, what: str) -> int:
    value: object = None
    if isinstance(node, dict) and node.get("type") == "VALUE_CONSTANT":
        value = literal(node)[0].value
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LIMIT:
        raise reject(
            "UNSUPPORTED_EXPRESSION",
            f"{what} must be an integer literal between 0 and {MAX_LIMIT}",
            construct=what,
        )
    return value
