"""Helpers for walking DuckDB's JSON parse tree strictly: refusals, key allowlists, limits, names.

Every node the analyzer accepts is checked key by key: a key it does not know, or a known key with a
non-default value it does not handle, is refused. Location keys and the redundant `class` are the
only keys ignored everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from gateway.errors import InvalidQueryError

__all__ = [
    "EMPTY_ORDER",
    "MAX_EXPRESSION_DEPTH",
    "MAX_GROUPS",
    "MAX_GROUP_KEYS",
    "MAX_IN_LIST",
    "MAX_STRING_LITERAL",
    "check_keys",
    "fold",
    "reject",
    "show",
    "walk",
]

MAX_EXPRESSION_DEPTH = 32
"""Deepest accepted expression tree (in plan nodes)."""
MAX_IN_LIST = 1_000
"""Most values in one IN list."""
MAX_STRING_LITERAL = 1_000
"""Longest string literal, in characters."""
MAX_GROUP_KEYS = 3
"""Most GROUP BY keys."""
MAX_GROUPS = 100_000
"""Largest product of the GROUP BY keys' domain sizes."""

EMPTY_ORDER: dict[str, Any] = {"type": "ORDER_MODIFIER", "orders": []}
"""The `order_bys` value of a function call without ORDER BY."""

_IGNORED = frozenset({"class", "type", "query_location", "query_location_length"})
_MAX_SHOWN = 64


def reject(reason: str, message: str, **metadata: str) -> InvalidQueryError:
    """Build the refusal for a query (the caller raises it).

    Args:
        reason: UPPER_SNAKE reason code (ErrorInfo.reason).
        message: Human-readable text; only query fragments and catalog names, never data.
        **metadata: lowerCamelCase details for clients.

    Returns:
        The error to raise.
    """
    return InvalidQueryError(message, reason=reason, **metadata)


def show(text: str) -> str:
    """Return a query fragment fit for a message: printable and at most 64 characters."""
    cleaned = "".join(c if c.isprintable() else "?" for c in text)
    if len(cleaned) > _MAX_SHOWN:
        cleaned = cleaned[: _MAX_SHOWN - 3] + "..."
    return cleaned


def fold(name: str) -> str:
    """Case-fold an identifier the way SQL does for ASCII names.

    Non-ASCII names are compared exactly, so look-alike letters (the Kelvin sign lower-cases to
    `k`) never match a catalog name.
    """
    return name.lower() if name.isascii() else name


def _same(value: Any, default: Any) -> bool:
    """Compare JSON values strictly (`0` is not `False`)."""
    if type(value) is not type(default):
        return False
    if isinstance(default, dict):
        return set(value) == set(default) and all(_same(value[k], default[k]) for k in default)
    if isinstance(default, list):
        return len(value) == len(default) and all(
            _same(v, d) for v, d in zip(value, default, strict=True)
        )
    return bool(value == default)


def check_keys(
    node: Mapping[str, Any],
    what: str,
    *,
    defaults: Mapping[str, Any] | None = None,
    free: frozenset[str] = frozenset(),
    reason: str = "UNSUPPORTED_CONSTRUCT",
) -> None:
    """Refuse a node with an unknown key, or with a known key set to a value we do not handle.

    Args:
        node: A parse-tree object.
        what: Name of the construct, for the message.
        defaults: Keys that must hold exactly this value.
        free: Keys whose values the caller checks itself.
        reason: Reason code for the refusal.

    Raises:
        InvalidQueryError: on the first offending key.
    """
    defaults = defaults or {}
    for key, value in node.items():
        if key in _IGNORED or key in free:
            continue
        if key in defaults:
            if not _same(value, defaults[key]):
                raise reject(
                    reason,
                    f"{what}: the element '{show(key)}' is not supported",
                    construct=key,
                )
            continue
        raise reject(reason, f"{what}: unexpected element '{show(key)}'", construct=key)


def walk(value: Any) -> Iterator[dict[str, Any]]:
    """Yield every object nested in a parse tree, without recursion."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
