"""Turn consumer SQL into a validated `QueryPlan`, or refuse it with a specific reason.

The SQL text is never executed: `parse_select` parses it with DuckDB's own parser, this module
checks the parse tree against an allowlist and builds a typed plan from it, and the sandbox
regenerates SQL from the plan. Every decision depends only on the query text and the public
catalog, never on data.

Supported::

    SELECT <outputs> FROM <table> [WHERE <filter>] [GROUP BY <key>, ...]
    [HAVING <condition on outputs>] [ORDER BY <output> [ASC|DESC] [NULLS FIRST|LAST], ...]
    [LIMIT n] [OFFSET m]

where each output is a GROUP BY key or an aggregate (COUNT(*), COUNT(expr), COUNT(DISTINCT unit),
SUM/AVG/VAR*/STDDEV*/MEDIAN/QUANTILE*/PERCENTILE*/MIN/MAX over a bounded expression), optionally
aliased. Group keys are columns with a public domain or expressions over one such column (or over an
int64 column whose bounds span at most 10,000 integers); their domains are computed here from public
values only. HAVING, ORDER BY and LIMIT/OFFSET are post-processing of released values, returned apart
from the plan (`AnalyzedQuery.post`) and applied by the gateway.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from gateway.postprocess import OrderItem, PostProcess, slot_key
from gateway.sql.expressions import Converter, convert_expression, convert_filter
from gateway.sql.nodes import (
    Kind,
    Scope,
    check_bounded,
    describe,
    forbid_nested,
    function_keys_ok,
    literal,
)
from gateway.sql.parse import aggregate_function_names, evaluate_domain, parse_select
from gateway.sql.tree import (
    EMPTY_ORDER,
    MAX_GROUP_KEYS,
    MAX_GROUPS,
    check_keys,
    fold,
    reject,
    show,
    walk,
)
from sandbox.bounds import expression_bounds
from sandbox.compile import render_expression
from sandbox.protocol import (
    BOUNDED_KINDS,
    Aggregate,
    AggregateKind,
    Column,
    DatasetInfo,
    Expr,
    GroupKey,
    OutputColumn,
    QueryPlan,
    Scalar,
)

__all__ = ["AnalyzedQuery", "analyze", "analyze_query"]

MAX_KEY_DOMAIN = 10_000
"""Most values one group key's domain may have."""
MAX_LIMIT = 1_000_000

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


@dataclass(frozen=True, slots=True)
class AnalyzedQuery:
    """The plan for the sandbox and the post-processing the gateway applies to its release."""

    plan: QueryPlan
    post: PostProcess = field(default_factory=PostProcess)
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


def analyze_query(sql: str, dataset: DatasetInfo) -> AnalyzedQuery:
    """Validate `sql` against the allowlist and the dataset's public catalog; build plan and post.

    Args:
        sql: The consumer's query text (never executed).
        dataset: The public description of the dataset the query runs on.

    Returns:
        The typed plan the sandbox will compile and run, and the gateway-side post-processing.

    Raises:
        InvalidQueryError: with a specific `reason` (UPPER_SNAKE); the message holds only query
            fragments and catalog names.
    """
    node = parse_select(sql)
    return _Analyzer(dataset).query(node)


def analyze(sql: str, dataset: DatasetInfo) -> QueryPlan:
    """The plan of `analyze_query` (for callers that need no post-processing)."""
    return analyze_query(sql, dataset).plan


def _unsupported(construct: str, message: str) -> Exception:
    return reject("UNSUPPORTED_CONSTRUCT", message, construct=construct)


class _Analyzer:
    """Builds one plan; holds the pieces collected while walking the SELECT node."""

    def __init__(self, dataset: DatasetInfo) -> None:
        self.dataset = dataset
        self.keys: list[GroupKey] = []
        self.aggregates: list[Aggregate] = []
        self.outputs: list[OutputColumn] = []
        self.scope: Scope | None = None

    def query(self, node: dict[str, Any]) -> AnalyzedQuery:
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
        self.scope = scope
        modifiers = self._split_modifiers(node.get("modifiers"))
        self._check_clauses(node)
        for clause in ("select_list", "where_clause", "group_expressions", "having"):
            forbid_nested(node.get(clause))
        for mod in modifiers:
            forbid_nested(mod)
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
        having_node = node.get("having")
        having = None if having_node is None else self._having(having_node, scope)
        order_by, limit, offset = self._post_modifiers(modifiers, scope)
        plan = QueryPlan(
            dataset=self.dataset.name,
            table=scope.table.name,
            aggregates=tuple(self.aggregates),
            outputs=tuple(self.outputs),
            where=filter_expr,
            group_by=tuple(self.keys),
        )
        return AnalyzedQuery(plan, PostProcess(having, order_by, limit, offset))

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

    def _split_modifiers(self, modifiers: Any) -> list[dict[str, Any]]:
        if modifiers in (None, []):
            return []
        if not isinstance(modifiers, list):
            raise _unsupported("MODIFIER", "malformed query modifiers")
        out: list[dict[str, Any]] = []
        for mod in modifiers:
            kind = str(mod.get("type")) if isinstance(mod, dict) else "?"
            if kind not in ("ORDER_MODIFIER", "LIMIT_MODIFIER") or not isinstance(mod, dict):
                construct, what = _MODIFIERS.get(kind, (show(kind), show(kind)))
                raise _unsupported(construct, f"{what} is not supported")
            out.append(mod)
        return out

    def _check_clauses(self, node: dict[str, Any]) -> None:
        if node.get("sample") is not None:
            raise _unsupported("SAMPLE", "USING SAMPLE / TABLESAMPLE is not supported")
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
                f"GROUP BY takes at most {MAX_GROUP_KEYS} keys",
                limit=str(MAX_GROUP_KEYS),
            )
        groups = 1
        for expr in exprs:
            key = self._group_key(expr, scope)
            if any(k.expr == key.expr for k in self.keys):
                continue
            self.keys.append(key)
            assert key.domain is not None
            groups *= max(len(key.domain), 1)
        if groups > MAX_GROUPS:
            raise reject(
                "TOO_MANY_GROUPS",
                f"the GROUP BY keys have {groups} combinations; the limit is {MAX_GROUPS}",
                limit=str(MAX_GROUPS),
            )

    def _group_key(self, node: Any, scope: Scope) -> GroupKey:
        if isinstance(node, dict) and node.get("type") == "VALUE_CONSTANT":
            raise reject(
                "UNSUPPORTED_EXPRESSION",
                "GROUP BY positions are not supported; name the key",
                construct="GROUP_BY_POSITION",
            )
        expr, kind = convert_expression(node, scope, "GROUP BY")
        columns = sorted({c.name for c in _columns(expr)})
        if len(columns) != 1:
            raise reject(
                "GROUP_KEY_NOT_PUBLIC",
                "a GROUP BY key must be a column with a public domain or an expression over one "
                "such column",
                construct="GROUP_BY_EXPRESSION",
            )
        col = scope.table.column(columns[0])
        assert col is not None
        base = _column_domain(col.domain, col.type, col.lower, col.upper)
        if base is None:
            raise reject(
                "GROUP_KEY_NOT_PUBLIC",
                f"column {col.name} has no public domain; grouping by it would publish "
                "its values",
                column=col.name,
            )
        if kind is Kind.NULL:
            raise reject("UNSUPPORTED_EXPRESSION", "a GROUP BY key cannot be NULL")
        if isinstance(expr, Column):
            domain = base
        else:
            sql = render_expression(expr, scope.table, self.dataset.privacy_unit)
            domain = evaluate_domain(sql, col.name, col.type, base, MAX_KEY_DOMAIN + 1)
        if len(domain) > MAX_KEY_DOMAIN:
            raise reject(
                "TOO_MANY_GROUPS",
                f"a GROUP BY key may take at most {MAX_KEY_DOMAIN} values",
                limit=str(MAX_KEY_DOMAIN),
            )
        if not domain:
            raise reject("GROUP_KEY_NOT_PUBLIC", "the GROUP BY key takes no value")
        name = col.name if isinstance(expr, Column) else f"key{len(self.keys) + 1}"
        return GroupKey(name, expr, domain)

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
            for i, key in enumerate(self.keys):
                if key.expr == Column(col.name):
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
                index, default = self._aggregate(item, scope)
                return OutputColumn(alias or default, aggregate_index=index)
        if self.keys and kind not in ("VALUE_CONSTANT",) and not _has_aggregate(item):
            expr, _ = convert_expression(item | {"alias": ""}, scope, "the select list")
            for i, key in enumerate(self.keys):
                if key.expr == expr:
                    return OutputColumn(alias or key.name, group_index=i)
            raise reject(
                "BARE_COLUMN",
                "this output is neither a GROUP BY key nor an aggregate; releasing it would "
                "publish rows",
                construct="OUTPUT_EXPRESSION",
            )
        if kind == "FUNCTION" and not _has_aggregate(item):
            convert_expression(item | {"alias": ""}, scope, "the select list")  # names the function
        construct, text = describe(item)
        raise reject(
            "UNSUPPORTED_EXPRESSION",
            f"{text} cannot be used in the select list; select group keys and aggregates",
            construct=construct,
        )

    def _aggregate(self, item: dict[str, Any], scope: Scope) -> tuple[int, str]:
        """Add (or find) the aggregate of a call; return its index and default output name."""
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
                order_arg = self._within_group(orders, shown)
                node = node | {"order_bys": EMPTY_ORDER}
        distinct = node.get("distinct") is True
        if distinct and name == "count":
            node = node | {"distinct": False}
        function_keys_ok(node, shown, is_operator=False)
        args = [a["expression"] for a in node["arguments"]]
        if order_arg is not None:
            args = [order_arg, *args]
        if distinct and name == "count":
            return self._count_distinct(args, scope)
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
            arg = self._aggregate_argument(args[0], kind, shown, scope)
        lower = upper = None
        if kind in BOUNDED_KINDS:
            assert arg is not None
            derived = expression_bounds(arg, scope.table)
            if derived is None:
                raise reject(
                    "UNBOUNDED_EXPRESSION",
                    f"the argument of {shown} has no finite bounds; add CLAMP(expr, lo, hi)",
                    construct="AGGREGATE_ARGUMENT",
                )
            lower, upper = derived[0], derived[1]
        aggregate = Aggregate(kind, arg, 1.0, lower, upper, quantile)
        default = "count" if arg is None else _default_name(kind, arg, name)
        return self._add(aggregate), default

    def _add(self, aggregate: Aggregate) -> int:
        if aggregate in self.aggregates:
            return self.aggregates.index(aggregate)
        self.aggregates.append(aggregate)
        return len(self.aggregates) - 1

    def _within_group(self, orders: Any, shown: str) -> Any:
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

    def _count_distinct(self, args: list[Any], scope: Scope) -> tuple[int, str]:
        unit = self.dataset.privacy_unit
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
        index = self._add(Aggregate(AggregateKind.COUNT_DISTINCT_UNIT))
        return index, f"count_distinct_{unit}"

    def _aggregate_argument(
        self, node: Any, kind: AggregateKind, shown: str, scope: Scope
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

    # -- post-processing ------------------------------------------------------------------------

    def _having(self, node: Any, scope: Scope) -> Expr:
        conv = _OutputConverter(scope, self)
        expr, kind, _ = conv.convert(node, 0)
        if kind not in (Kind.BOOLEAN, Kind.NULL):
            raise reject("TYPE_MISMATCH", "HAVING needs a boolean condition", construct="HAVING")
        return expr

    def _post_modifiers(
        self, modifiers: list[dict[str, Any]], scope: Scope
    ) -> tuple[tuple[OrderItem, ...], int | None, int]:
        order: list[OrderItem] = []
        limit: int | None = None
        offset = 0
        for mod in modifiers:
            if mod["type"] == "ORDER_MODIFIER":
                check_keys(mod, "ORDER BY", free=frozenset({"orders"}))
                for item in mod.get("orders") or []:
                    order.append(self._order_item(item, scope))
                continue
            check_keys(
                mod, "LIMIT", free=frozenset({"limit", "offset"}), defaults={"limit_type": "ROW_COUNT"}
            )
            if mod.get("limit") is not None:
                limit = _count_literal(mod["limit"], "LIMIT")
            if mod.get("offset") is not None:
                offset = _count_literal(mod["offset"], "OFFSET")
        return tuple(order), limit, offset

    def _order_item(self, item: Any, scope: Scope) -> OrderItem:
        if not isinstance(item, dict):
            raise _unsupported("ORDER_BY", "malformed ORDER BY")
        direction = item.get("type")
        nulls = item.get("null_order", "ORDER_DEFAULT")
        if direction not in ("ORDER_DEFAULT", "ASCENDING", "DESCENDING") or nulls not in (
            "ORDER_DEFAULT", "NULLS FIRST", "NULLS LAST", "NULLS_FIRST", "NULLS_LAST"
        ):
            raise _unsupported("ORDER_BY", "unsupported ORDER BY direction")
        expr = item.get("expression")
        slot: str | None = None
        if isinstance(expr, dict) and expr.get("type") == "VALUE_CONSTANT":
            lit, _ = literal(expr)
            if isinstance(lit.value, bool) or not isinstance(lit.value, int) or not (
                1 <= lit.value <= len(self.outputs)
            ):
                raise reject(
                    "UNSUPPORTED_EXPRESSION",
                    "ORDER BY positions must name an output column (1 to the number of outputs)",
                    construct="ORDER_BY",
                )
            out = self.outputs[lit.value - 1]
            slot = _slot(out)
        else:
            conv = _OutputConverter(scope, self)
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


class _OutputConverter(Converter):
    """Reads HAVING / ORDER BY: names are outputs or group keys; aggregates are released values."""

    where = "HAVING or ORDER BY"

    def __init__(self, scope: Scope, analyzer: _Analyzer) -> None:
        super().__init__(scope)
        self.analyzer = analyzer

    def column_ref(self, node: dict[str, Any]) -> tuple[Expr, Kind]:
        names = node.get("column_names")
        if isinstance(names, list) and len(names) == 1 and isinstance(names[0], str):
            for out in self.analyzer.outputs:
                if fold(out.name) == fold(names[0]):
                    return Column(_slot(out)), self._kind(out)
        col = self.scope.resolve(node)
        for i, key in enumerate(self.analyzer.keys):
            if key.expr == Column(col.name):
                return Column(slot_key(i)), _KIND_OF_TYPE[col.type]
        raise reject(
            "BARE_COLUMN",
            f"column {col.name} in HAVING or ORDER BY is neither an output nor a GROUP BY key",
            column=col.name,
        )

    def aggregate_call(self, node: dict[str, Any]) -> tuple[Expr, Kind] | None:
        index, _ = self.analyzer._aggregate(node, self.scope)
        return Column(f"a{index}"), Kind.NUMBER

    def _kind(self, out: OutputColumn) -> Kind:
        if out.aggregate_index is not None:
            return Kind.NUMBER
        assert out.group_index is not None
        key = self.analyzer.keys[out.group_index]
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


def _columns(e: Any) -> list[Column]:
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


def _is_aggregate(name: str) -> bool:
    return name in _AGGREGATES or name in aggregate_function_names()


def _has_aggregate(node: Any) -> bool:
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
