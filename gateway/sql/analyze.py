"""Turn consumer SQL into a validated `QueryPlan`, or refuse it with a specific reason.

The SQL text is never executed: `parse_select` parses it with DuckDB's own parser, this module
checks the parse tree against an allowlist and builds a typed plan from it, and the sandbox
regenerates SQL from the plan. Every decision depends only on the query text and the public
catalog, never on data.

Supported (issue #2)::

    SELECT <outputs> FROM <table> [WHERE <filter>] [GROUP BY <col>, ...]

where each output is a GROUP BY column or one of COUNT(*), COUNT(col), SUM(col),
AVG(col) / MEAN(col), optionally aliased. The structure (`_check_*` per clause) leaves room for
joins, subqueries, CASE, functions and more aggregates later.
"""

from __future__ import annotations

import re
from typing import Any

from gateway.sql.expressions import convert_filter
from gateway.sql.nodes import Scope, check_bounded, describe, forbid_nested, function_keys_ok
from gateway.sql.parse import aggregate_function_names, parse_select
from gateway.sql.tree import (
    MAX_GROUP_KEYS,
    MAX_GROUPS,
    check_keys,
    fold,
    reject,
    show,
    walk,
)
from sandbox.protocol import (
    Aggregate,
    AggregateKind,
    ColumnInfo,
    DatasetInfo,
    OutputColumn,
    QueryPlan,
)

__all__ = ["analyze"]

_AGGREGATES = {
    "count_star": AggregateKind.COUNT,
    "count": AggregateKind.COUNT_COLUMN,
    "sum": AggregateKind.SUM,
    "avg": AggregateKind.AVG,
    "mean": AggregateKind.AVG,
}
_DEFAULT_PREFIX = {
    AggregateKind.COUNT_COLUMN: "count_",
    AggregateKind.SUM: "sum_",
    AggregateKind.AVG: "avg_",
}
_ALIAS = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_SELECT_KEYS = frozenset(
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
_MODIFIERS = {
    "DISTINCT_MODIFIER": ("DISTINCT", "DISTINCT"),
    "ORDER_MODIFIER": ("ORDER_BY", "ORDER BY"),
    "LIMIT_MODIFIER": ("LIMIT", "LIMIT"),
    "LIMIT_PERCENT_MODIFIER": ("LIMIT", "LIMIT ... %"),
}
_SHOW = {"DESCRIBE": "DESCRIBE", "SUMMARY": "SUMMARIZE", "SHOW": "SHOW", "SHOW_SPECIAL": "SHOW"}
_TABLE_REFS = {
    "JOIN": ("JOIN", "joins are not supported yet"),
    "SUBQUERY": ("SUBQUERY", "subqueries are not supported yet"),
    "EXPRESSION_LIST": ("VALUES", "VALUES lists are not supported; query a table of the dataset"),
    "EMPTY": ("NO_FROM", "a query must read a table of the dataset (FROM is missing)"),
}


def analyze(sql: str, dataset: DatasetInfo) -> QueryPlan:
    """Validate `sql` against the allowlist and the dataset's public catalog, and build its plan.

    Args:
        sql: The consumer's query text (never executed).
        dataset: The public description of the dataset the query runs on.

    Returns:
        The typed plan the sandbox will compile and run.

    Raises:
        InvalidQueryError: with a specific `reason` (UPPER_SNAKE); the message holds only query
            fragments and catalog names.
    """
    node = parse_select(sql)
    return _Analyzer(dataset).query(node)


def _unsupported(construct: str, message: str) -> Exception:
    return reject("UNSUPPORTED_CONSTRUCT", message, construct=construct)


class _Analyzer:
    """Builds one plan; holds the pieces collected while walking the SELECT node."""

    def __init__(self, dataset: DatasetInfo) -> None:
        self.dataset = dataset
        self.group_by: list[str] = []
        self.aggregates: list[Aggregate] = []
        self.outputs: list[OutputColumn] = []

    def query(self, node: dict[str, Any]) -> QueryPlan:
        """Check the top-level query node, then each clause, and assemble the plan."""
        kind = node.get("type")
        if kind == "SET_OPERATION_NODE":
            setop = str(node.get("setop_type", "set operation"))
            setop += " ALL" if node.get("setop_all") else ""
            raise _unsupported("SET_OPERATION", f"{show(setop)} is not supported")
        if kind != "SELECT_NODE":
            raise _unsupported(show(str(kind)), f"{show(str(kind))} queries are not supported")
        check_keys(node, "SELECT", free=_SELECT_KEYS)
        self._check_ctes(node.get("cte_map"))
        scope = self._check_from(node.get("from_table"))
        self._check_modifiers(node.get("modifiers"))
        self._check_clauses(node)
        for clause in ("select_list", "where_clause", "group_expressions"):
            forbid_nested(node.get(clause))
        self._check_group_by(node.get("group_expressions"), node.get("group_sets"), scope)
        self._check_select_list(node.get("select_list"), scope)
        where = node.get("where_clause")
        filter_expr = None if where is None else convert_filter(where, scope)
        if not self.aggregates:
            raise reject(
                "NO_AGGREGATE",
                "the query has no aggregate; ask for COUNT(*), COUNT(col), SUM(col) or AVG(col)",
            )
        seen: set[str] = set()
        for out in self.outputs:
            if fold(out.name) in seen:
                raise reject(
                    "DUPLICATE_OUTPUT_NAME",
                    f"two output columns are named {out.name}; give them distinct aliases",
                    name=out.name,
                )
            seen.add(fold(out.name))
        return QueryPlan(
            dataset=self.dataset.name,
            table=scope.table.name,
            aggregates=tuple(self.aggregates),
            outputs=tuple(self.outputs),
            where=filter_expr,
            group_by=tuple(self.group_by),
        )

    # -- clauses ------------------------------------------------------------------------------

    def _check_ctes(self, cte_map: Any) -> None:
        if cte_map in (None, {"map": []}):
            return
        recursive = any(n.get("type") == "RECURSIVE_CTE_NODE" for n in walk(cte_map))
        raise _unsupported(
            "CTE",
            f"{'WITH RECURSIVE' if recursive else 'WITH'} (common table expressions) is "
            "not supported yet",
        )

    def _check_from(self, ref: Any) -> Scope:
        if not isinstance(ref, dict):
            raise _unsupported("FROM", "malformed FROM clause")
        kind = str(ref.get("type"))
        if kind == "TABLE_FUNCTION":
            function = ref.get("function")
            name = function.get("function_name", "") if isinstance(function, dict) else ""
            raise reject(
                "TABLE_FUNCTION",
                f"table functions such as {show(str(name))}() are not allowed; "
                "query a table of the dataset",
                function=show(str(name)),
            )
        if kind == "SHOW_REF":
            what = _SHOW.get(str(ref.get("show_type")), "SHOW")
            raise _unsupported(
                what, f"{what} is not supported; the public catalog describes the tables"
            )
        if kind in _TABLE_REFS:
            raise _unsupported(*_TABLE_REFS[kind])
        if kind != "BASE_TABLE":
            raise _unsupported(show(kind), f"{show(kind)} in FROM is not supported")
        if ref.get("sample") is not None:
            raise _unsupported("TABLESAMPLE", "TABLESAMPLE is not supported")
        if ref.get("at_clause") is not None:
            raise _unsupported("AT", "AT (time travel) is not supported")
        if ref.get("column_name_alias", []) != []:
            raise _unsupported("COLUMN_ALIASES", "column aliases in FROM are not supported")
        name = ref.get("table_name")
        if ref.get("schema_name", "") != "" or ref.get("catalog_name", "") != "":
            raise _unsupported(
                "QUALIFIED_TABLE",
                "qualified table names (schema.table) are not supported; use the table name alone",
            )
        check_keys(
            ref,
            "FROM",
            free=frozenset({"table_name", "alias", "qualified_name"}),
            defaults={
                "sample": None,
                "at_clause": None,
                "column_name_alias": [],
                "schema_name": "",
                "catalog_name": "",
            },
        )
        alias = ref.get("alias", "")
        if (
            not isinstance(name, str)
            or not isinstance(alias, str)
            or ref.get("qualified_name") != {"path": [name]}
        ):
            raise reject("UNKNOWN_TABLE", "unknown table")
        for table in self.dataset.tables:
            if fold(table.name) == fold(name):
                return Scope(table, fold(alias) if alias else fold(table.name))
        raise reject("UNKNOWN_TABLE", "unknown table")

    def _check_modifiers(self, modifiers: Any) -> None:
        if modifiers in (None, []):
            return
        if not isinstance(modifiers, list):
            raise _unsupported("MODIFIER", "malformed query modifiers")
        for mod in modifiers:
            kind = str(mod.get("type")) if isinstance(mod, dict) else "?"
            construct, what = _MODIFIERS.get(kind, (show(kind), show(kind)))
            if kind == "LIMIT_MODIFIER" and mod.get("limit") is None:
                construct, what = "OFFSET", "OFFSET"
            raise _unsupported(construct, f"{what} is not supported yet")

    def _check_clauses(self, node: dict[str, Any]) -> None:
        if node.get("sample") is not None:
            raise _unsupported("SAMPLE", "USING SAMPLE / TABLESAMPLE is not supported")
        if node.get("having") is not None:
            raise _unsupported("HAVING", "HAVING is not supported yet")
        if node.get("qualify") is not None:
            raise _unsupported("QUALIFY", "QUALIFY is not supported")
        handling = node.get("aggregate_handling", "STANDARD_HANDLING")
        if handling == "FORCE_AGGREGATES":
            raise _unsupported("GROUP_BY_ALL", "GROUP BY ALL is not supported; name the columns")
        if handling != "STANDARD_HANDLING":
            raise _unsupported(show(str(handling)), f"{show(str(handling))} is not supported")

    def _check_group_by(self, exprs: Any, sets: Any, scope: Scope) -> None:
        exprs = [] if exprs is None else exprs
        sets = [] if sets is None else sets
        if not isinstance(exprs, list) or not isinstance(sets, list):
            raise _unsupported("GROUP_BY", "malformed GROUP BY")
        expected = [list(range(len(exprs)))] if exprs else []
        if sets != expected:
            raise _unsupported(
                "GROUPING_SETS", "ROLLUP, CUBE, GROUPING SETS and GROUP BY () are not supported"
            )
        if len(exprs) > MAX_GROUP_KEYS:
            raise reject(
                "TOO_MANY_GROUPS",
                f"GROUP BY takes at most {MAX_GROUP_KEYS} columns",
                limit=str(MAX_GROUP_KEYS),
            )
        groups = 1
        for expr in exprs:
            if not isinstance(expr, dict) or expr.get("type") != "COLUMN_REF":
                raise reject(
                    "UNSUPPORTED_EXPRESSION",
                    f"GROUP BY accepts only column names, not {describe(expr)[1]}",
                    construct="GROUP_BY_EXPRESSION",
                )
            col = scope.resolve(expr)
            if col.domain is None:
                raise reject(
                    "GROUP_KEY_NOT_PUBLIC",
                    f"column {col.name} has no public domain; grouping by it would publish "
                    "its values",
                    column=col.name,
                )
            if col.name not in self.group_by:
                self.group_by.append(col.name)
                groups *= max(len(col.domain), 1)
        if groups > MAX_GROUPS:
            raise reject(
                "TOO_MANY_GROUPS",
                f"the GROUP BY columns have {groups} combinations; the limit is {MAX_GROUPS}",
                limit=str(MAX_GROUPS),
            )

    # -- select list --------------------------------------------------------------------------

    def _check_select_list(self, items: Any, scope: Scope) -> None:
        if not isinstance(items, list) or not items:
            raise _unsupported("SELECT_LIST", "malformed select list")
        for item in items:
            if not isinstance(item, dict):
                raise _unsupported("SELECT_LIST", "malformed select list")
            alias = item.get("alias", "")
            if not isinstance(alias, str) or (alias and not _ALIAS.fullmatch(alias)):
                raise reject(
                    "INVALID_ALIAS",
                    f"alias {show(str(alias))} is not allowed; use at most 64 letters, digits "
                    "and underscores, not starting with a digit",
                    alias=show(str(alias)),
                )
            self.outputs.append(self._output(item, alias, scope))

    def _output(self, item: dict[str, Any], alias: str, scope: Scope) -> OutputColumn:
        kind = str(item.get("type"))
        if kind == "STAR":
            raise reject(
                "SELECT_STAR",
                "SELECT * would release rows; ask for aggregates such as COUNT(*)",
            )
        if kind == "COLUMN_REF":
            col = scope.resolve(item | {"alias": ""})
            if col.name not in self.group_by:
                raise reject(
                    "BARE_COLUMN",
                    f"column {col.name} is neither in GROUP BY nor inside an aggregate; "
                    "releasing it would publish rows",
                    column=col.name,
                )
            return OutputColumn(alias or col.name, group_index=self.group_by.index(col.name))
        if kind == "FUNCTION" and item.get("is_operator") is False:
            return self._aggregate(item, alias, scope)
        construct, text = describe(item)
        raise reject(
            "UNSUPPORTED_EXPRESSION",
            f"{text} cannot be used in the select list; select group columns and aggregates",
            construct=construct,
        )

    def _aggregate(self, item: dict[str, Any], alias: str, scope: Scope) -> OutputColumn:
        raw = item.get("function_name")
        name = fold(raw) if isinstance(raw, str) else ""
        if name not in _AGGREGATES:
            if name in aggregate_function_names():
                shown = "count(*)" if name == "count_star" else show(name)
                raise reject(
                    "UNSUPPORTED_AGGREGATE",
                    f"the aggregate {shown} is not supported; use COUNT, SUM or AVG",
                    function=show(name),
                )
            raise reject(
                "UNSUPPORTED_EXPRESSION",
                f"the function {show(str(raw))} is not supported in the select list",
                construct=show(str(raw)),
            )
        kind = _AGGREGATES[name]
        shown = "COUNT(*)" if kind is AggregateKind.COUNT else name.upper()
        function_keys_ok(item | {"alias": ""}, shown, is_operator=False)
        args = item["arguments"]
        column: ColumnInfo | None = None
        if kind is AggregateKind.COUNT:
            if args:
                raise reject("UNSUPPORTED_EXPRESSION", "COUNT(*) takes no argument")
        else:
            if len(args) != 1:
                raise reject("UNSUPPORTED_EXPRESSION", f"{shown} takes exactly one column")
            arg = args[0]["expression"]
            if not isinstance(arg, dict) or arg.get("type") != "COLUMN_REF":
                raise reject(
                    "UNSUPPORTED_EXPRESSION",
                    f"the argument of {shown} must be a plain column (expressions inside "
                    "aggregates are not supported yet)",
                    construct="AGGREGATE_ARGUMENT",
                )
            column = scope.resolve(arg)
            if kind in (AggregateKind.SUM, AggregateKind.AVG):
                check_bounded(column, shown)
        aggregate = Aggregate(kind, None if column is None else column.name, 1.0)
        if aggregate in self.aggregates:
            index = self.aggregates.index(aggregate)
        else:
            index = len(self.aggregates)
            self.aggregates.append(aggregate)
        default = "count" if column is None else _DEFAULT_PREFIX[kind] + column.name
        return OutputColumn(alias or default, aggregate_index=index)
