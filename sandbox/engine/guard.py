"""Defence in depth: the only SQL shape the sandbox will run, checked on DuckDB's own parse tree.

`compile.py` is the only producer of SQL, so this guard should never fire. It exists so that a
bug there cannot become a file read, a metadata leak or a second statement (docs/threats.md,
section 1): exactly one SELECT statement over tables the engine loaded; no CTEs, table functions,
SHOW/SUMMARIZE, VALUES, samples, time travel, modifiers, windows or star; only the functions,
operators and casts that `compile.py` emits. The shapes `compile.py` generates for sources are
allowed and nothing wider: INNER/LEFT joins with an ON equality (no CROSS, NATURAL, USING, ASOF,
POSITIONAL, LATERAL), derived tables in FROM that are themselves guarded SELECTs, and
`x [NOT] IN (SELECT ...)` subqueries (no EXISTS, scalar or correlated-by-shape subqueries).
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Set
from typing import Any

import duckdb

from sandbox.engine.storage import is_loaded_table
from sandbox.errors import PlanRejectedError

_NODE_KEYS = frozenset(
    {"type", "cte_map", "select_list", "from_table", "where_clause", "group_expressions",
     "group_sets", "aggregate_handling", "query_location", "query_location_length"}
)
_TABLE_KEYS = frozenset(
    {"type", "table_name", "schema_name", "catalog_name", "qualified_name", "alias", "query_location",
     "query_location_length"}
)
_JOIN_KEYS = frozenset(
    {"type", "left", "right", "condition", "join_type", "ref_type", "is_implicit",
     "query_location", "query_location_length"}
)
_SUBQUERY_REF_KEYS = frozenset({"type", "subquery", "alias", "query_location",
                                "query_location_length"})
_SUBQUERY_EXPR_KEYS = frozenset({"class", "type", "subquery_type", "subquery", "child",
                                 "comparison_type", "query_location", "query_location_length"})
_FUNCTIONS = frozenset(
    {"count_star", "count", "sum", "fsum", "avg", "min", "max", "least", "greatest", "isnan",
     "+", "-", "*", "/", "%",
     "coalesce", "nullif", "abs", "sign", "floor", "ceil", "round", "sqrt", "ln", "exp", "pow",
     "lower", "upper", "trim", "length", "substring", "concat", "||", "starts_with", "ends_with",
     "contains", "~~", "~~*"}
)
_FUNCTION_KEYS = frozenset(
    {"class", "type", "function_name", "arguments", "order_bys", "is_operator", "qualified_name",
     "alias", "query_location", "query_location_length", "distinct"}
)
_CLASSES = frozenset(
    {"COLUMN_REF", "CONSTANT", "FUNCTION", "CAST", "COMPARISON", "CONJUNCTION", "OPERATOR",
     "BETWEEN", "CASE", "TYPE", "SUBQUERY"}
)
_OPERATORS = frozenset(
    {"OPERATOR_COALESCE", "OPERATOR_NOT", "OPERATOR_IS_NULL", "OPERATOR_IS_NOT_NULL",
     "COMPARE_IN", "COMPARE_NOT_IN"}
)
_CAST_TYPES = frozenset({"DOUBLE", "BIGINT", "HUGEINT", "VARCHAR", "BOOLEAN"})  # HUGEINT: exact AVG sums


# Statements that passed `check_select`, by (SQL text, loaded tables): the check is a pure function of
# both (DuckDB's parser, then this module's rules), and parsing costs about 2 ms per request, so an
# accepted text is not parsed again. Only acceptances are remembered, at most _ACCEPTED_MAX of them.
_ACCEPTED_MAX = 1024
_accepted: OrderedDict[tuple[str, frozenset[str]], None] = OrderedDict()
_accepted_lock = threading.Lock()


def _refuse(why: str) -> PlanRejectedError:
    return PlanRejectedError(f"refused by the SQL guard: {why}")


def check_select(con: duckdb.DuckDBPyConnection, sql: str, tables: Set[str]) -> None:
    """Refuse `sql` unless it is one plain aggregate SELECT over one table of `tables`.

    Args:
        con: a connection or cursor of the locked database (only parses; runs nothing on data).
        sql: the statement text.
        tables: names of the tables the engine loaded.

    Raises:
        PlanRejectedError: anything else.
    """
    key = (sql, frozenset(tables))
    with _accepted_lock:
        if key in _accepted:
            _accepted.move_to_end(key)
            return
    _check_node(single_select_node(con, sql, _refuse), tables, 0)
    with _accepted_lock:
        _accepted[key] = None
        while len(_accepted) > _ACCEPTED_MAX:
            _accepted.popitem(last=False)


def single_select_node(
    con: duckdb.DuckDBPyConnection, sql: str, refuse: Callable[[str], PlanRejectedError]
) -> Any:
    """The parse tree of `sql` if it is exactly one SELECT statement (parsed, never run); else `refuse`."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise refuse("does not parse") from exc
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise refuse("exactly one SELECT statement is allowed")
    row = con.execute(
        "SELECT json_serialize_sql(?, skip_null := true, skip_empty := true, skip_default := true)",
        [sql],
    ).fetchone()
    tree = json.loads(row[0]) if row else {}
    if tree.get("error") is not False or len(tree.get("statements", ())) != 1:
        raise refuse("not a serialisable single SELECT")
    return tree["statements"][0].get("node", {})


def _check_node(node: Any, tables: Set[str], depth: int) -> None:
    if depth > 16:
        raise _refuse("query nested too deeply")
    if not isinstance(node, dict):
        raise _refuse("malformed query node")
    if node.get("type") != "SELECT_NODE" or not set(node) <= _NODE_KEYS:
        raise _refuse(f"unsupported query shape {sorted(set(node) - _NODE_KEYS)}")
    if node.get("cte_map", {}) not in ({}, {"map": []}):
        raise _refuse("common table expressions")
    if node.get("aggregate_handling", "STANDARD_HANDLING") != "STANDARD_HANDLING":
        raise _refuse("non-standard aggregate handling")
    _check_from(node.get("from_table", {}), tables, depth)
    for key in ("select_list", "where_clause", "group_expressions"):
        _walk(node.get(key), 0, tables, depth)


def _check_from(src: Any, tables: Set[str], depth: int) -> None:
    if not isinstance(src, dict):
        raise _refuse("malformed FROM")
    kind = src.get("type")
    if kind == "BASE_TABLE":
        if not set(src) <= _TABLE_KEYS:
            raise _refuse("the source must be a loaded table")
        if not is_loaded_table(src, tables):  # bare, or in the sandbox's store (sandbox.engine.storage)
            raise _refuse("unknown table")
        return
    if kind == "JOIN":
        if not set(src) <= _JOIN_KEYS:
            raise _refuse(f"join shape {sorted(set(src) - _JOIN_KEYS)}")
        if src.get("join_type", "INNER") not in ("INNER", "LEFT"):
            raise _refuse("join type")
        if src.get("ref_type", "REGULAR") != "REGULAR" or src.get("is_implicit", False):
            raise _refuse("join reference type")
        cond = src.get("condition")
        if not isinstance(cond, dict) or cond.get("type") != "COMPARE_EQUAL":
            raise _refuse("a join needs an ON equality")
        _walk(cond, 0, tables, depth)
        _check_from(src.get("left"), tables, depth)
        _check_from(src.get("right"), tables, depth)
        return
    if kind == "SUBQUERY":
        if not set(src) <= _SUBQUERY_REF_KEYS or not src.get("alias"):
            raise _refuse("derived table shape")
        sub = src.get("subquery")
        if not isinstance(sub, dict) or set(sub) != {"node"}:
            raise _refuse("derived table shape")
        _check_node(sub["node"], tables, depth + 1)
        return
    raise _refuse("the source must be loaded tables")


def _walk(e: Any, depth: int, tables: Set[str], qdepth: int) -> None:
    if depth > 600:
        raise _refuse("expression too deep")
    if isinstance(e, list):
        for x in e:
            _walk(x, depth + 1, tables, qdepth)
        return
    if not isinstance(e, dict):
        return
    cls = e.get("class")
    if cls is not None:
        if cls not in _CLASSES:
            raise _refuse(f"expression class {cls}")
        if cls == "SUBQUERY":
            # Only `x [NOT] IN (SELECT ...)` (the semi-join compile.py emits).
            if (
                not set(e) <= _SUBQUERY_EXPR_KEYS
                or e.get("subquery_type") != "ANY"
                or e.get("comparison_type") != "COMPARE_EQUAL"
            ):
                raise _refuse("only IN subqueries are allowed")
            sub = e.get("subquery")
            if not isinstance(sub, dict) or set(sub) != {"node"}:
                raise _refuse("subquery shape")
            _check_node(sub["node"], tables, qdepth + 1)
            _walk(e.get("child"), depth + 1, tables, qdepth)
            return
        if cls == "FUNCTION":
            if e.get("function_name") not in _FUNCTIONS or not set(e) <= _FUNCTION_KEYS:
                raise _refuse(f"function {e.get('function_name')!r}")
            if e.get("order_bys", {"type": "ORDER_MODIFIER"}) != {"type": "ORDER_MODIFIER"}:
                raise _refuse("ordered aggregate")
        if cls == "OPERATOR" and e.get("type") not in _OPERATORS:
            raise _refuse(f"operator {e.get('type')}")
        if cls == "TYPE" and (e.get("type_name") not in _CAST_TYPES or e.get("children")):
            raise _refuse("cast target")
        if cls == "FUNCTION" and e.get("distinct") and e.get("function_name") != "count":
            raise _refuse("DISTINCT outside COUNT(DISTINCT unit)")
        if cls == "COLUMN_REF" and not 1 <= len(e.get("column_names", ())) <= 2:
            raise _refuse("qualified column reference")
    for k, v in e.items():
        if k != "qualified_name":
            _walk(v, depth + 1, tables, qdepth)
