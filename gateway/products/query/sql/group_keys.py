"""GROUP BY: each key a column with a public domain or an expression over one (its domain computed from public
values only), or a column without one whose keys DP partition selection releases; the domains narrowed by the
WHERE clause's own literals."""

from __future__ import annotations

import math
from typing import Any

import msgspec

from gateway.products.query.sql.expressions import convert_expression
from gateway.products.query.sql.nodes import Kind, Scope
from gateway.products.query.sql.parse import evaluate_domain
from gateway.products.query.sql.parts import PlanParts
from gateway.products.query.sql.statement import unsupported
from gateway.products.query.sql.tree import MAX_GROUP_KEYS, MAX_GROUPS, reject
from sandbox.plans.compile import render_expression
from sandbox.plans.relation import key as relation_key
from sandbox.protocol.messages import Binary, Column, Expr, GroupKey, InList, Literal, Scalar, TableInfo

__all__ = ["MAX_KEY_DOMAIN", "check_group_by", "narrow_domain", "plan_columns"]

MAX_KEY_DOMAIN = 10_000
"""Most values one group key's domain may have."""


def check_group_by(parts: PlanParts, exprs: Any, sets: Any, scope: Scope) -> None:
    """Read the GROUP BY keys into `parts.keys` (a repeated key once); refuse grouping sets and too many groups."""
    exprs = [] if exprs is None else exprs
    sets = [] if sets is None else sets
    if not isinstance(exprs, list) or not isinstance(sets, list):
        raise unsupported("GROUP_BY", "malformed GROUP BY")
    expected = [list(range(len(exprs)))] if exprs else []
    if sets != expected:
        raise unsupported(
            "GROUPING_SETS", "ROLLUP, CUBE, GROUPING SETS and GROUP BY () are not supported"
        )
    if len(exprs) > MAX_GROUP_KEYS:
        raise reject(
            "TOO_MANY_GROUPS",
            f"GROUP BY takes at most {MAX_GROUP_KEYS} keys",
            limit=str(MAX_GROUP_KEYS),
        )
    groups = 1
    for expr in exprs:
        key = _group_key(parts, expr, scope)
        if any(k.expr == key.expr for k in parts.keys):
            continue
        parts.keys.append(key)
        groups *= max(len(key.domain or ()), 1)
    if groups > MAX_GROUPS:
        raise reject(
            "TOO_MANY_GROUPS",
            f"the GROUP BY keys have {groups} combinations; the limit is {MAX_GROUPS}",
            limit=str(MAX_GROUPS),
        )


def _group_key(parts: PlanParts, node: Any, scope: Scope) -> GroupKey:
    if isinstance(node, dict) and node.get("type") == "VALUE_CONSTANT":
        literal = node.get("literal")
        if not (isinstance(literal, dict) and literal.get("kind") == "INTEGER"):
            raise reject(
                "CONSTANT_GROUP_KEY",
                "GROUP BY a constant makes one group of every row; remove it (COUNT(*) without "
                "GROUP BY answers the same)",
                construct="GROUP_BY",
            )
        raise reject(
            "UNSUPPORTED_EXPRESSION",
            "GROUP BY positions are not supported; name the key",
            construct="GROUP_BY_POSITION",
        )
    expr, kind = convert_expression(node, scope, "GROUP BY")
    columns = sorted({(c.table or "", c.name) for c in plan_columns(expr)})
    if len(columns) != 1:
        raise reject(
            "GROUP_KEY_NOT_PUBLIC",
            "a GROUP BY key must be a column with a public domain or an expression over one "
            "such column",
            construct="GROUP_BY_EXPRESSION",
        )
    key_column = next(c for c in plan_columns(expr))
    col = parts.columns().column(relation_key(key_column))
    assert col is not None
    base = _column_domain(col.domain, col.type, col.lower, col.upper)
    if base is None:
        if isinstance(expr, Column) and col.type != "float64":
            # No public domain: the keys come from the data, released only through DP
            # partition selection (the grant must allow delta; checked by the gateway).
            return GroupKey(col.name, expr, None)
        if isinstance(expr, Column):
            raise reject(
                "GROUP_KEY_NOT_PUBLIC",
                f"column {col.name} is a float without a public domain; grouping by "
                "it would publish its values",
                column=col.name,
            )
        raise reject(
            "GROUP_KEY_NOT_PUBLIC",
            f"column {col.name} has no public domain; grouping by an expression over it "
            "would publish its values",
            column=col.name,
        )
    if kind is Kind.NULL:
        raise reject("UNSUPPORTED_EXPRESSION", "a GROUP BY key cannot be NULL")
    if isinstance(expr, Column):
        domain = base
    else:
        # Evaluated over the column's public values alone, as an unqualified one-column table.
        local = _unqualified(expr)
        one = TableInfo("domain", (col,), 1)
        sql = render_expression(local, one, parts.dataset.privacy_unit)
        domain = evaluate_domain(sql, col.name, col.type, base, MAX_KEY_DOMAIN + 1)
    if len(domain) > MAX_KEY_DOMAIN:
        raise reject(
            "TOO_MANY_GROUPS",
            f"a GROUP BY key may take at most {MAX_KEY_DOMAIN} values",
            limit=str(MAX_KEY_DOMAIN),
        )
    if not domain:
        raise reject("GROUP_KEY_NOT_PUBLIC", "the GROUP BY key takes no value")
    name = col.name if isinstance(expr, Column) else f"key{len(parts.keys) + 1}"
    return GroupKey(name, expr, domain)


def plan_columns(e: Any) -> list[Column]:
    """Every column reference in a plan expression."""
    found: list[Column] = []
    stack = [e]
    while stack:
        x = stack.pop()
        if isinstance(x, Column):
            found.append(x)
        elif isinstance(x, tuple):
            stack.extend(x)
        elif hasattr(x, "__slots__"):
            stack.extend(getattr(x, s) for s in x.__slots__)
    return found


def _column_domain(
    domain: tuple[Scalar, ...] | None, typ: str, lower: float | None, upper: float | None
) -> tuple[Scalar, ...] | None:
    """The public values of a column: its declared domain, or every integer within the bounds of an
    int64 column whose bounds span at most 10,000 integers (values outside are dropped)."""
    if domain is not None:
        return domain
    if typ == "int64" and lower is not None and upper is not None and upper - lower < MAX_KEY_DOMAIN:
        return tuple(range(math.ceil(lower), math.floor(upper) + 1))
    return None


def _unqualified(e: Any) -> Any:
    """`e` with every column reference unqualified (for evaluating a key over its domain)."""
    if isinstance(e, Column):
        return Column(e.name)
    if isinstance(e, tuple):
        return tuple(_unqualified(x) for x in e)
    if isinstance(e, msgspec.Struct):
        return msgspec.structs.replace(e, **{f: _unqualified(getattr(e, f)) for f in e.__struct_fields__})
    return e


def _filter_conjuncts(e: Expr | None) -> list[Expr]:
    """The top-level AND operands of a typed filter."""
    if e is None:
        return []
    if isinstance(e, Binary) and e.op.upper() == "AND":
        return _filter_conjuncts(e.left) + _filter_conjuncts(e.right)
    return [e]


def narrow_domain(key: GroupKey, where: Expr | None) -> GroupKey:
    """The key's public domain restricted by the WHERE clause's own literals.

    `WHERE month IN ('2025-01', '2025-02') GROUP BY month` answers those two months only, not every
    declared month: a domain value the filter excludes can only hold zero rows, so answering it would
    publish noise about nothing. The narrowing reads the query text and the public domain only (top-level
    `key = literal` and `key IN (literals)` conjuncts), never the data, and only removes cells.

    Raises:
        PlanRejectedError (via `reject`): the filter excludes every value of the key.
    """
    if key.domain is None:
        return key
    allowed: set[Scalar] | None = None
    for c in _filter_conjuncts(where):
        values: tuple[Scalar, ...] | None = None
        if isinstance(c, InList) and not c.negated and c.operand == key.expr:
            values = tuple(v.value for v in c.values)
        elif isinstance(c, Binary) and c.op == "=":
            if c.left == key.expr and isinstance(c.right, Literal):
                values = (c.right.value,)
            elif c.right == key.expr and isinstance(c.left, Literal):
                values = (c.left.value,)
        if values is None:
            continue
        same: set[Scalar] = {d for d in key.domain for v in values
                if v is not None and isinstance(v, bool) == isinstance(d, bool) and v == d}
        allowed = same if allowed is None else allowed & same
    if allowed is None:
        return key
    domain = tuple(d for d in key.domain if d in allowed)
    if not domain:
        raise reject(
            "GROUP_KEY_NOT_PUBLIC",
            f"the WHERE clause excludes every value of the GROUP BY key {key.name}",
            construct="EMPTY_GROUP_DOMAIN",
        )
    return GroupKey(key.name, key.expr, domain)
