"""The statement's shape: one SELECT, its clauses and modifiers, its common table expressions, its aliases.

Every check here reads the parse tree only (`gateway.products.query.sql.parse`); what the clauses mean is read by
the other modules of the analyzer (`analyze.py` puts them together).
"""

from __future__ import annotations

import re
from typing import Any

from gateway.errors import InvalidQueryError
from gateway.products.query.sql.tree import check_keys, fold, reject, show, walk

__all__ = ["ALIAS", "SELECT_KEYS", "check_clauses", "collect_ctes", "split_modifiers", "unsupported"]

ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
"""An alias the analyzer accepts: at most 64 letters, digits and underscores, not starting with a digit."""
SELECT_KEYS = frozenset(
    {
        "select_list",
        "from_table",
        "where_clause",
        "group_expressions",
        "group_sets",
        "modifiers",
        "cte_map",
        "having",
        "qualify",
        "sample",
        "aggregate_handling",
    }
)
"""The keys of a SELECT node whose values the analyzer reads itself."""
_MODIFIERS = {
    "DISTINCT_MODIFIER": ("DISTINCT", "DISTINCT"),
    "ORDER_MODIFIER": ("ORDER_BY", "ORDER BY"),
    "LIMIT_MODIFIER": ("LIMIT", "LIMIT"),
    "LIMIT_PERCENT_MODIFIER": ("LIMIT", "LIMIT ... %"),
}


def unsupported(construct: str, message: str) -> InvalidQueryError:
    """The refusal of a construct the analyzer does not support (UNSUPPORTED_CONSTRUCT)."""
    return reject("UNSUPPORTED_CONSTRUCT", message, construct=construct)


def collect_ctes(cte_map: Any) -> dict[str, dict[str, Any]]:
    """The non-recursive CTEs by folded name (each must then be used exactly once, as a per-unit subquery)."""
    ctes: dict[str, dict[str, Any]] = {}
    if cte_map in (None, {"map": []}, {}):
        return ctes
    recursive = any(n.get("type") == "RECURSIVE_CTE_NODE" for n in walk(cte_map))
    if recursive:
        raise unsupported("RECURSIVE_CTE", "WITH RECURSIVE is not supported")
    entries = cte_map.get("map") if isinstance(cte_map, dict) else None
    if not isinstance(entries, list) or set(cte_map) != {"map"}:
        raise unsupported("CTE", "malformed WITH clause")
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) != {"key", "value"}:
            raise unsupported("CTE", "malformed WITH clause")
        name, value = entry["key"], entry["value"]
        if not isinstance(name, str) or not isinstance(value, dict):
            raise unsupported("CTE", "malformed WITH clause")
        check_keys(
            value,
            "WITH",
            defaults={"materialized": "CTE_MATERIALIZE_DEFAULT", "aliases": [],
                      "key_targets": [], "payload_aggregates": []},
            free=frozenset({"query_node"}),
        )
        if fold(name) in ctes:
            raise unsupported("CTE", f"the name {show(name)} is defined twice")
        ctes[fold(name)] = value["query_node"]
    return ctes


def split_modifiers(modifiers: Any) -> list[dict[str, Any]]:
    """ORDER BY and LIMIT/OFFSET modifiers; any other (DISTINCT, LIMIT %) is refused."""
    if modifiers in (None, []):
        return []
    if not isinstance(modifiers, list):
        raise unsupported("MODIFIER", "malformed query modifiers")
    out: list[dict[str, Any]] = []
    for mod in modifiers:
        kind = str(mod.get("type")) if isinstance(mod, dict) else "?"
        if kind not in ("ORDER_MODIFIER", "LIMIT_MODIFIER") or not isinstance(mod, dict):
            construct, what = _MODIFIERS.get(kind, (show(kind), show(kind)))
            raise unsupported(construct, f"{what} is not supported")
        out.append(mod)
    return out


def check_clauses(node: dict[str, Any]) -> None:
    """Refuse USING SAMPLE, QUALIFY and GROUP BY ALL (any SELECT node: the query, a subquery)."""
    if node.get("sample") is not None:
        raise unsupported("SAMPLE", "USING SAMPLE / TABLESAMPLE is not supported")
    if node.get("qualify") is not None:
        raise unsupported("QUALIFY", "QUALIFY is not supported")
    handling = node.get("aggregate_handling", "STANDARD_HANDLING")
    if handling == "FORCE_AGGREGATES":
        raise unsupported("GROUP_BY_ALL", "GROUP BY ALL is not supported; name the columns")
    if handling != "STANDARD_HANDLING":
        raise unsupported(show(str(handling)), f"{show(str(handling))} is not supported")
