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

import msgspec

from gateway.products.query.postprocess import OrderItem, PostProcess, slot_key
from gateway.products.query.sql.expressions import Converter, convert_expression, convert_filter
from gateway.products.query.sql.nodes import (
    Kind,
    Scope,
    ScopeEntry,
    check_bounded,
    describe,
    forbid_nested,
    function_keys_ok,
    literal,
)
from gateway.products.query.sql.parse import aggregate_function_names, evaluate_domain, parse_select
from gateway.products.query.sql.tree import (
    EMPTY_ORDER,
    MAX_GROUP_KEYS,
    MAX_GROUPS,
    check_keys,
    fold,
    reject,
    show,
    walk,
)
from sandbox.errors import PlanRejectedError
from sandbox.plans.bounds import Columns, expression_bounds
from sandbox.plans.compile import PlanTooComplexError, TooManyCellsError, compile_dataset_plan, render_expression
from sandbox.plans.relation import MAX_TABLES, Relation, leftmost_table, source_relation
from sandbox.plans.relation import key as relation_key
from sandbox.protocol.messages import (
    BOUNDED_KINDS,
    Aggregate,
    AggregateKind,
    Binary,
    Column,
    ColumnInfo,
    DatasetInfo,
    Expr,
    GroupKey,
    InList,
    InUnits,
    Literal,
    OutputColumn,
    PublicJoin,
    QueryPlan,
    Scalar,
    Source,
    TableInfo,
    TableSource,
    UnitAggregate,
    UnitJoin,
    UnitOutput,
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


def analyze_query(sql: str, dataset: DatasetInfo, *, max_cells: int = MAX_GROUPS) -> AnalyzedQuery:
    """Validate `sql` against the allowlist and the dataset's public catalog; build plan and post.

    Args:
        sql: The consumer's query text (never executed).
        dataset: The public description of the dataset the query runs on.
        max_cells: The most group-key combinations the sandbox answers (`CatalogInfo.max_cells`).

    Returns:
        The typed plan the sandbox will compile and run, and the gateway-side post-processing.

    Raises:
        InvalidQueryError: with a specific `reason` (UPPER_SNAKE); the message holds only query
            fragments and catalog names.
    """
    node = parse_select(sql)
    analyzed = _Analyzer(dataset).query(node)
    _check_compiles(analyzed.plan, dataset, max_cells)
    return analyzed


def _check_compiles(plan: QueryPlan, dataset: DatasetInfo, max_cells: int) -> None:
    """The sandbox's own compiler accepts the plan (its limits on depth, nodes, values, cells and rendered
    size are the plan limits; one definition, `sandbox.plans.compile`), so an accepted query never fails there."""
    try:
        compile_dataset_plan(plan, dataset, max_cells=max_cells)
    except TooManyCellsError as exc:
        raise reject("TOO_MANY_GROUPS", f"the sandbox answers at most {max_cells} groups: {exc}",
                     limit=str(max_cells)) from exc
    except PlanTooComplexError as exc:
        raise reject("QUERY_TOO_COMPLEX", f"the query is too complex for the sandbox: {exc}") from exc
    except PlanRejectedError as exc:
        raise reject("QUERY_NOT_SUPPORTED", f"the sandbox cannot run this query: {exc}") from exc


def analyze(sql: str, dataset: DatasetInfo) -> QueryPlan:
    """The plan of `analyze_query` (for callers that need no post-processing)."""
    return analyze_query(sql, dataset).plan


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


def _unsupported(construct: str, message: str) -> Exception:
    return reject("UNSUPPORTED_CONSTRUCT", message, construct=construct)


class _Analyzer:
    """Builds one plan; holds the pieces collected while walking the SELECT node."""

    def __init__(self, dataset: DatasetInfo) -> None:
        self.dataset = dataset
        self.keys: list[GroupKey] = []
        self.aggregates: list[Aggregate] = []
        self.outputs: list[OutputColumn] = []
        self.ctes: dict[str, dict[str, Any]] = {}
        self.cte_used: set[str] = set()
        self.source: Source | None = None
        self.relation: Relation | None = None
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
        unused = set(self.ctes) - self.cte_used
        if unused:
            raise _unsupported("CTE", f"the common table expression {show(sorted(unused)[0])} "
                               "is not used; remove it")
        modifiers = self._split_modifiers(node.get("modifiers"))
        self._check_clauses(node)
        for clause in ("select_list", "group_expressions", "having"):
            forbid_nested(node.get(clause), scalar=True)
        forbid_nested(node.get("where_clause"), allow_subqueries=True)
        for mod in modifiers:
            forbid_nested(mod, scalar=True)
        self._check_group_by(node.get("group_expressions"), node.get("group_sets"), scope)
        self._check_select_list(node.get("select_list"), scope)
        where = node.get("where_clause")
        filter_expr = (
            None
            if where is None
            else convert_filter(where, scope, lambda n, neg: self._semi_join(n, neg, scope))
        )
        if not self.aggregates:
            raise reject(
                "NO_AGGREGATE",
                "the query has no aggregate; ask for COUNT(*), COUNT(col), SUM(col) or AVG(col)",
            )
        self.keys = [_narrow_domain(k, filter_expr) for k in self.keys]
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
            table=scope.table.name if self.source is None else leftmost_table(self.source),
            aggregates=tuple(self.aggregates),
            outputs=tuple(self.outputs),
            where=filter_expr,
            group_by=tuple(self.keys),
            source=self.source,
        )
        return AnalyzedQuery(plan, PostProcess(having, order_by, limit, offset))

    # -- clauses ------------------------------------------------------------------------------

    def _check_ctes(self, cte_map: Any) -> None:
        """Collect non-recursive CTEs; each must be used exactly once, as a per-unit subquery."""
        if cte_map in (None, {"map": []}, {}):
            return
        recursive = any(n.get("type") == "RECURSIVE_CTE_NODE" for n in walk(cte_map))
        if recursive:
            raise _unsupported("RECURSIVE_CTE", "WITH RECURSIVE is not supported")
        entries = cte_map.get("map") if isinstance(cte_map, dict) else None
        if not isinstance(entries, list) or set(cte_map) != {"map"}:
            raise _unsupported("CTE", "malformed WITH clause")
        for entry in entries:
            if not isinstance(entry, dict) or set(entry) != {"key", "value"}:
                raise _unsupported("CTE", "malformed WITH clause")
            name, value = entry["key"], entry["value"]
            if not isinstance(name, str) or not isinstance(value, dict):
                raise _unsupported("CTE", "malformed WITH clause")
            check_keys(
                value,
                "WITH",
                defaults={"materialized": "CTE_MATERIALIZE_DEFAULT", "aliases": [],
                          "key_targets": [], "payload_aggregates": []},
                free=frozenset({"query_node"}),
            )
            if fold(name) in self.ctes:
                raise _unsupported("CTE", f"the name {show(name)} is defined twice")
            self.ctes[fold(name)] = value["query_node"]

    def _check_from(self, ref: Any) -> Scope:
        """The query's scope; sets `self.source` unless it reads one plain table."""
        if (
            isinstance(ref, dict)
            and ref.get("type") == "BASE_TABLE"
            and fold(str(ref.get("table_name"))) not in self.ctes
        ):
            table, alias = self._base_table(ref)
            if table.public:
                raise reject(
                    "PUBLIC_TABLE_ALONE",
                    f"{table.name} is a public lookup table; join it to a table of the dataset",
                    table=table.name,
                )
            return Scope(table, alias, unit=self.dataset.privacy_unit)
        source = self._source(ref)
        rel = self._relation(source)
        self.source, self.relation = source, rel
        return _scope_of(source, rel, self.dataset)

    def _relation(self, source: Source) -> Relation:
        if _count_tables(source) > MAX_TABLES:
            raise reject(
                "TOO_MANY_JOINS",
                f"a query may read at most {MAX_TABLES} tables",
                limit=str(MAX_TABLES),
            )
        try:
            return source_relation(source, self.dataset)
        except PlanRejectedError as exc:  # backstop: the specific checks come first
            raise reject("UNSUPPORTED_JOIN", str(exc)[:200]) from None

    def _base_table(self, ref: dict[str, Any]) -> tuple[TableInfo, str]:
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
        if alias and not _ALIAS.fullmatch(alias):
            raise reject("INVALID_ALIAS", f"alias {show(alias)} is not allowed", alias=show(alias))
        for table in self.dataset.tables:
            if fold(table.name) == fold(name):
                return table, fold(alias) if alias else fold(table.name)
        raise reject("UNKNOWN_TABLE", "unknown table")

    # -- sources: joins, public lookups, per-unit pre-aggregation, semi-joins ----------------

    def _source(self, ref: Any, depth: int = 0) -> Source:
        if depth > 8:
            raise reject("QUERY_TOO_COMPLEX", "FROM is nested too deeply", limit="8")
        kind = ref.get("type") if isinstance(ref, dict) else None
        if kind == "JOIN":
            return self._join(ref, depth)
        if kind == "SUBQUERY":
            assert isinstance(ref, dict)
            if ref.get("sample") is not None:
                raise _unsupported("TABLESAMPLE", "TABLESAMPLE is not supported")
            check_keys(ref, "subquery", free=frozenset({"subquery", "alias"}),
                       defaults={"column_name_alias": [], "sample": None})
            sub = ref.get("subquery")
            if not isinstance(sub, dict) or not set(sub) <= {"node", "named_param_map"} or sub.get(
                "named_param_map", []
            ) != []:
                raise _unsupported("SUBQUERY", "malformed subquery")
            return self._unit_aggregate(sub["node"], str(ref.get("alias", "")) or "subquery",
                                        depth)
        if kind == "BASE_TABLE":
            assert isinstance(ref, dict)
            name = fold(str(ref.get("table_name")))
            if name in self.ctes and ref.get("schema_name", "") == "":
                if name in self.cte_used:
                    raise _unsupported("CTE_REUSED", f"the common table expression {show(name)} "
                                       "may be used only once")
                self.cte_used.add(name)
                alias = str(ref.get("alias", "")) or name
                return self._unit_aggregate(self.ctes[name], alias, depth)
        table, alias = self._base_table(ref)
        return TableSource(table.name, alias)

    def _join(self, ref: dict[str, Any], depth: int) -> Source:
        ref_type = str(ref.get("ref_type", "REGULAR"))
        join_type = str(ref.get("join_type", "INNER"))
        if ref_type == "CROSS":
            raise reject(
                "CROSS_JOIN",
                "cross joins (and comma-separated tables) pair every row with every row; join "
                "tables ON their privacy unit",
            )
        if ref_type != "REGULAR":
            what = {"DEPENDENT": "LATERAL"}.get(ref_type, ref_type)
            raise reject("UNSUPPORTED_JOIN", f"{show(what)} joins are not supported",
                         construct=show(what))
        if join_type not in ("INNER", "LEFT"):
            raise reject("UNSUPPORTED_JOIN", f"{show(join_type)} joins are not supported; use "
                         "INNER or LEFT JOIN", construct=show(join_type))
        check_keys(
            ref,
            "JOIN",
            free=frozenset({"left", "right", "condition", "using_columns", "join_type",
                            "ref_type"}),
            defaults={"alias": "", "sample": None, "ranking_expression": None,
                      "delim_flipped": False, "is_implicit": False, "nearest_count": 1,
                      "nearest_order_type": "ASCENDING", "nearest_approx": False,
                      "duplicate_eliminated_columns": []},
            reason="UNSUPPORTED_JOIN",
        )
        left = self._source(ref.get("left"), depth + 1)
        right_ref = ref.get("right")
        if not isinstance(right_ref, dict) or right_ref.get("type") != "BASE_TABLE" or fold(
            str(right_ref.get("table_name"))
        ) in self.ctes:
            rtype = right_ref.get("type") if isinstance(right_ref, dict) else None
            if rtype == "JOIN":
                raise reject("UNSUPPORTED_JOIN", "parenthesised joins are not supported")
            if rtype == "BASE_TABLE":
                assert isinstance(right_ref, dict)
                self._source(right_ref, depth + 1)  # a CTE used twice is refused there
            elif rtype != "SUBQUERY":
                self._base_table(right_ref or {})  # table functions, VALUES, ... get their reason
            raise reject("UNSUPPORTED_JOIN", "the right side of a join must be a table of the "
                         "dataset; put subqueries first")
        table, alias = self._base_table(right_ref)
        right = TableSource(table.name, alias)
        if _count_tables(left) + 1 > MAX_TABLES:
            raise reject("TOO_MANY_JOINS", f"a query may read at most {MAX_TABLES} tables",
                         limit=str(MAX_TABLES))
        lrel = self._relation(left)
        if alias in lrel.aliases:
            raise reject("DUPLICATE_ALIAS", f"the alias {show(alias)} is used twice; give each "
                         "table its own alias", alias=show(alias))
        if table.name in lrel.tables:
            raise reject("SELF_JOIN", f"table {table.name} is joined with itself; a self-join "
                         "multiplies each unit's rows", table=table.name)
        if _leftmost_public(left, self.dataset):
            raise reject("UNSUPPORTED_JOIN", "a public lookup table must be joined to a table "
                         "of the dataset, not the other way round")
        kind = join_type.lower()
        lscope = _scope_of(left, lrel, self.dataset)
        rentry = _entry(alias, table, self.dataset)
        both = Scope(lscope.table, lscope.qualifier, (*lscope.entries, rentry), True,
                     lscope.primary_unit)
        using = ref.get("using_columns", [])
        cond = ref.get("condition")
        if table.public:
            return self._public_join(left, right, table, kind, cond, using, lscope, both)
        if using:
            if [fold(str(u)) for u in using] != [fold(self.dataset.privacy_unit)]:
                raise _not_on_unit()
            return UnitJoin(left, right, kind)
        if not isinstance(cond, dict) or cond.get("type") != "COMPARE_EQUAL":
            raise _not_on_unit()
        sides = [cond.get("left"), cond.get("right")]
        if not all(isinstance(x, dict) and x.get("type") == "COLUMN_REF" for x in sides):
            raise _not_on_unit()
        refs = [both.lookup(x) for x in sides]  # type: ignore[arg-type]
        if not all(r.is_unit for r in refs) or {r.table == alias for r in refs} != {True, False}:
            raise _not_on_unit()
        return UnitJoin(left, right, kind)

    def _public_join(
        self,
        left: Source,
        right: TableSource,
        table: TableInfo,
        kind: str,
        cond: Any,
        using: Any,
        lscope: Scope,
        both: Scope,
    ) -> Source:
        if using or not isinstance(cond, dict) or cond.get("type") != "COMPARE_EQUAL":
            raise reject("JOIN_NOT_ON_KEY", f"join the lookup table {table.name} with ON "
                         f"<column> = {right.alias}.{table.unique_key}", table=table.name)
        sides = [cond.get("left"), cond.get("right")]
        if not all(isinstance(x, dict) and x.get("type") == "COLUMN_REF" for x in sides):
            raise reject("JOIN_NOT_ON_KEY", "a lookup join compares two columns",
                         table=table.name)
        refs = [both.lookup(x) for x in sides]  # type: ignore[arg-type]
        pub = [i for i, r in enumerate(refs) if r.table == right.alias]
        if len(pub) != 1:
            raise reject("JOIN_NOT_ON_KEY", f"the lookup join must compare a column of "
                         f"{table.name} with a column of the other tables", table=table.name)
        rref, lnode = refs[pub[0]], sides[1 - pub[0]]
        if rref.column.name != table.unique_key:
            raise reject(
                "JOIN_KEY_NOT_UNIQUE",
                f"{table.name}.{rref.column.name} is not the table's unique key "
                f"({table.unique_key}); a non-unique key would multiply each unit's rows",
                column=rref.column.name,
            )
        lref = lscope.resolve_ref(lnode)  # type: ignore[arg-type]
        if _static_kind(lref.column) != _static_kind(rref.column):
            raise reject("TYPE_MISMATCH", "the join keys have different types",
                         construct="JOIN")
        return PublicJoin(left, right, Column(lref.column.name, lref.table),
                          rref.column.name, kind)

    def _unit_aggregate(self, node: Any, alias: str, depth: int) -> Source:
        """`(SELECT unit, agg(col) AS x, ... FROM src [WHERE ...] GROUP BY unit) alias`."""
        if not _ALIAS.fullmatch(alias):
            raise reject("INVALID_ALIAS", f"alias {show(alias)} is not allowed", alias=show(alias))
        alias = fold(alias)
        if not isinstance(node, dict) or node.get("type") != "SELECT_NODE":
            if isinstance(node, dict) and node.get("type") == "SET_OPERATION_NODE":
                raise _unsupported("SET_OPERATION", "UNION/INTERSECT/EXCEPT inside FROM is not "
                                   "supported")
            raise _unsupported("SUBQUERY", "unsupported subquery")
        check_keys(node, "subquery", free=_SELECT_KEYS)
        if node.get("cte_map") not in (None, {}, {"map": []}):
            raise _unsupported("CTE", "WITH inside a subquery is not supported")
        mods = node.get("modifiers")
        if mods not in (None, []):
            first = mods[0] if isinstance(mods, list) and mods else {}
            if isinstance(first, dict) and first.get("type") == "DISTINCT_MODIFIER":
                raise reject("SUBQUERY_NOT_ON_PRIVACY_UNIT", "SELECT DISTINCT in a subquery "
                             "forgets how many rows each unit had; group by the unit instead")
            raise _unsupported("MODIFIER", "ORDER BY / LIMIT inside a subquery is not supported")
        self._check_clauses(node)
        if node.get("having") is not None:  # top-level HAVING is post-processing; here it is not
            raise _unsupported("HAVING", "HAVING inside a subquery is not supported")
        inner = self._source(node.get("from_table"), depth + 1)
        if isinstance(inner, UnitAggregate):
            raise _unsupported("NESTED_SUBQUERY", "nested per-unit subqueries are not supported")
        rel = self._relation(inner)
        scope = _scope_of(inner, rel, self.dataset)
        for clause in ("select_list", "where_clause", "group_expressions"):
            forbid_nested(node.get(clause), scalar=True)
        groups = node.get("group_expressions") or []
        if (
            not isinstance(groups, list)
            or len(groups) != 1
            or node.get("group_sets") != [[0]]
            or not isinstance(groups[0], dict)
            or groups[0].get("type") != "COLUMN_REF"
            or not scope.lookup(groups[0]).is_unit
        ):
            raise reject(
                "SUBQUERY_NOT_ON_PRIVACY_UNIT",
                f"a subquery in FROM must GROUP BY exactly the privacy unit "
                f"({self.dataset.privacy_unit}), so that it yields one row per unit",
            )
        outputs: list[UnitOutput] = []
        for item in node.get("select_list") or []:
            if not isinstance(item, dict):
                raise _unsupported("SELECT_LIST", "malformed select list")
            name = str(item.get("alias", ""))
            if name and not _ALIAS.fullmatch(name):
                raise reject("INVALID_ALIAS", f"alias {show(name)} is not allowed",
                             alias=show(name))
            if item.get("type") == "COLUMN_REF":
                if not scope.lookup(item | {"alias": ""}).is_unit:
                    scope.resolve(item | {"alias": ""})  # identifier/unknown refusals first
                    raise reject(
                        "SUBQUERY_NOT_ON_PRIVACY_UNIT",
                        "a per-unit subquery outputs the privacy unit and aggregates only",
                    )
                if name and fold(name) != fold(self.dataset.privacy_unit):
                    raise reject("INVALID_ALIAS", "the privacy unit cannot be renamed")
                continue
            outputs.append(self._unit_output(item, name, scope))
        if not outputs:
            raise reject("NO_AGGREGATE", "a per-unit subquery needs at least one aggregate")
        names = [o.name for o in outputs]
        if len(set(names)) != len(names) or fold(self.dataset.privacy_unit) in names:
            raise reject("DUPLICATE_OUTPUT_NAME", "the subquery's outputs need distinct names")
        where = node.get("where_clause")
        filt = None if where is None else convert_filter(where, scope)
        return UnitAggregate(inner, filt, tuple(outputs), alias)

    def _unit_output(self, item: dict[str, Any], name: str, scope: Scope) -> UnitOutput:
        raw = item.get("function_name")
        fname = fold(raw) if isinstance(raw, str) and item.get("type") == "FUNCTION" else ""
        kinds = {"sum": "sum", "count": "count", "count_star": "count_star", "avg": "avg",
                 "mean": "avg", "min": "min", "max": "max"}
        if fname not in kinds or item.get("is_operator") is not False:
            construct, text = describe(item)
            raise reject(
                "UNSUPPORTED_EXPRESSION",
                f"{text} cannot be an output of a per-unit subquery; use SUM, COUNT, AVG, MIN "
                "or MAX of a column",
                construct=construct,
            )
        kind = kinds[fname]
        function_keys_ok(item | {"alias": ""}, fname.upper(), is_operator=False)
        args = item.get("arguments") or []
        if kind == "count_star":
            if args:
                raise reject("UNSUPPORTED_EXPRESSION", "COUNT(*) takes no argument")
            return UnitOutput(fold(name) if name else "count", kind)
        if len(args) != 1 or not isinstance(args[0]["expression"], dict) or args[0][
            "expression"
        ].get("type") != "COLUMN_REF":
            raise reject("UNSUPPORTED_EXPRESSION", f"{fname.upper()} in a per-unit subquery "
                         "takes one column", construct="AGGREGATE_ARGUMENT")
        ref = scope.resolve_ref(args[0]["expression"])
        if kind != "count":
            check_bounded(ref.column, fname.upper())
        default = f"{kind}_{ref.column.name}"
        out = fold(name) if name else default
        if not _ALIAS.fullmatch(out):
            raise reject("INVALID_ALIAS", f"name the output of {fname.upper()} with AS")
        return UnitOutput(out, kind, Column(ref.column.name, ref.table))

    def _semi_join(self, node: dict[str, Any], negated: bool, outer: Scope) -> Expr:
        """`unit [NOT] IN (SELECT unit FROM ...)` or correlated `[NOT] EXISTS` on the unit."""
        sub_type = node.get("subquery_type")
        check_keys(node, "subquery", free=frozenset({"subquery", "subquery_type", "child",
                                                      "comparison_type"}),
                   defaults={"alias": ""})
        if sub_type == "SCALAR":
            raise _scalar_subquery()
        sub = node.get("subquery")
        if not isinstance(sub, dict) or not set(sub) <= {"node", "named_param_map"} or sub.get(
                "named_param_map", []
            ) != []:
            raise _unsupported("SUBQUERY", "malformed subquery")
        inner_node = sub["node"]
        if not isinstance(inner_node, dict) or inner_node.get("type") != "SELECT_NODE":
            raise _unsupported("SET_OPERATION", "set operations inside subqueries are not "
                               "supported")
        check_keys(inner_node, "subquery", free=_SELECT_KEYS)
        if inner_node.get("cte_map") not in (None, {}, {"map": []}):
            raise _unsupported("CTE", "WITH inside a subquery is not supported")
        if inner_node.get("modifiers") not in (None, []) or inner_node.get(
            "group_expressions"
        ) not in (None, []):
            raise reject("SUBQUERY_NOT_ON_PRIVACY_UNIT", "an IN/EXISTS subquery takes no "
                         "GROUP BY, DISTINCT, ORDER BY or LIMIT")
        self._check_clauses(inner_node)
        if inner_node.get("having") is not None:  # top-level HAVING is post-processing; here it is not
            raise _unsupported("HAVING", "HAVING inside a subquery is not supported")
        for clause in ("select_list", "where_clause"):
            forbid_nested(inner_node.get(clause), scalar=True)
        source = self._source(inner_node.get("from_table"), 1)
        rel = self._relation(source)
        scope = _scope_of(source, rel, self.dataset)
        items = inner_node.get("select_list") or []
        where = inner_node.get("where_clause")
        if sub_type == "ANY":
            child = node.get("child")
            if (
                node.get("comparison_type") != "COMPARE_EQUAL"
                or not isinstance(child, dict)
                or child.get("type") != "COLUMN_REF"
                or not _outer_unit(outer, child)
                or len(items) != 1
                or not isinstance(items[0], dict)
                or items[0].get("type") != "COLUMN_REF"
                or not scope.lookup(items[0] | {"alias": ""}).is_unit
            ):
                raise reject(
                    "SUBQUERY_NOT_ON_PRIVACY_UNIT",
                    f"IN (subquery) is allowed only as {self.dataset.privacy_unit} IN (SELECT "
                    f"{self.dataset.privacy_unit} FROM ...), a filter on the same unit",
                )
            filt = None if where is None else convert_filter(where, scope)
            return InUnits(source, filt, negated)
        if sub_type != "EXISTS":
            raise reject("SUBQUERY_NOT_ON_PRIVACY_UNIT", "this subquery is not a filter on the "
                         "privacy unit")
        conjuncts = _conjuncts(where)
        rest: list[Any] = []
        found = 0
        for c in conjuncts:
            if self._is_correlation(c, scope, rel, outer):
                found += 1
            else:
                rest.append(c)
        if found != 1:
            raise reject(
                "SUBQUERY_NOT_ON_PRIVACY_UNIT",
                "EXISTS (subquery) must be correlated on the privacy unit: WHERE "
                f"inner.{self.dataset.privacy_unit} = outer.{self.dataset.privacy_unit}",
            )
        filt = None
        if rest:
            combined = rest[0] if len(rest) == 1 else {"type": "CONJUNCTION_AND",
                                                       "children": rest}
            filt = convert_filter(combined, scope)
        return InUnits(source, filt, negated)

    def _is_correlation(self, c: Any, inner: Scope, rel: Relation, outer: Scope) -> bool:
        if not isinstance(c, dict) or c.get("type") != "COMPARE_EQUAL":
            return False
        sides = [c.get("left"), c.get("right")]
        if not all(isinstance(x, dict) and x.get("type") == "COLUMN_REF" for x in sides):
            return False
        for a, b in ((sides[0], sides[1]), (sides[1], sides[0])):
            assert isinstance(a, dict) and isinstance(b, dict)
            names = b.get("column_names")
            if not (isinstance(names, list) and len(names) == 2):
                continue
            if fold(str(names[0])) in rel.aliases:
                continue  # b names an inner alias: not a reference to the outer query
            try:
                ia = inner.lookup(a)
            except Exception:
                continue
            if ia.is_unit and _outer_unit(outer, b):
                return True
        return False

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
            groups *= max(len(key.domain or ()), 1)
        if groups > MAX_GROUPS:
            raise reject(
                "TOO_MANY_GROUPS",
                f"the GROUP BY keys have {groups} combinations; the limit is {MAX_GROUPS}",
                limit=str(MAX_GROUPS),
            )

    def _columns(self) -> Columns:
        """Column descriptions by plan key: the source's relation (joined tables and derived
        per-unit columns included), or the single table."""
        if self.relation is not None:
            return self.relation
        assert self.scope is not None
        return self.scope.table

    def _group_key(self, node: Any, scope: Scope) -> GroupKey:
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
        columns = sorted({(c.table or "", c.name) for c in _columns(expr)})
        if len(columns) != 1:
            raise reject(
                "GROUP_KEY_NOT_PUBLIC",
                "a GROUP BY key must be a column with a public domain or an expression over one "
                "such column",
                construct="GROUP_BY_EXPRESSION",
            )
        key_column = next(c for c in _columns(expr))
        col = self._columns().column(relation_key(key_column))
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
            sql = render_expression(local, one, self.dataset.privacy_unit)
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
            ref = scope.resolve_ref(item | {"alias": ""})
            col = ref.column
            for i, key in enumerate(self.keys):
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
            derived = expression_bounds(arg, self._columns())
            if derived is None:
                raise reject(
                    "UNBOUNDED_EXPRESSION",
                    f"the argument of {shown} has no finite bounds; add CLAMP(expr, lo, hi)",
                    construct="AGGREGATE_ARGUMENT",
                )
            lower, upper = derived[0], derived[1]
            _refuse_constant(kind, shown, lower, upper)
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
        ref = self.scope.resolve_ref(node)
        col = ref.column
        for i, key in enumerate(self.analyzer.keys):
            if key.expr == Column(col.name, ref.table):
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
        if key.domain is None and isinstance(key.expr, Column):  # partition selection: a column
            col = self.analyzer._columns().column(relation_key(key.expr))
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

def _unqualified(e: Any) -> Any:
    """`e` with every column reference unqualified (for evaluating a key over its domain)."""
    if isinstance(e, Column):
        return Column(e.name)
    if isinstance(e, tuple):
        return tuple(_unqualified(x) for x in e)
    if isinstance(e, msgspec.Struct):
        return msgspec.structs.replace(e, **{f: _unqualified(getattr(e, f)) for f in e.__struct_fields__})
    return e


def _not_on_unit() -> Exception:
    return reject(
        "JOIN_NOT_ON_PRIVACY_UNIT",
        "tables of the dataset may only be joined ON a.<unit> = b.<unit> (or USING (<unit>)); "
        "any other condition can pair one unit's rows with many others",
    )


def _scalar_subquery() -> Exception:
    return reject(
        "SCALAR_SUBQUERY",
        "scalar subqueries can pick out one row's value; they are not allowed",
        construct="SUBQUERY",
    )


def _count_tables(s: Source) -> int:
    match s:
        case TableSource():
            return 1
        case UnitJoin(left, _, _) | PublicJoin(left, _, _, _, _):
            return _count_tables(left) + 1
        case UnitAggregate(inp, _, _, _):
            return _count_tables(inp)


def _leftmost_public(s: Source, dataset: DatasetInfo) -> bool:
    t = dataset.table(leftmost_table(s))
    return t is not None and t.public and isinstance(s, TableSource)


def _entry(alias: str, table: TableInfo, dataset: DatasetInfo) -> ScopeEntry:
    unit = None if table.public else fold(dataset.privacy_unit)
    return ScopeEntry(alias, {fold(c.name): c for c in table.columns}, unit)


def _scope_of(source: Source, rel: Relation, dataset: DatasetInfo) -> Scope:
    """A qualified scope over a source's relation: one entry per alias."""
    by_alias: dict[str, dict[str, ColumnInfo]] = {}
    for k, col in rel.columns.items():
        alias, _, _ = k.partition(".")
        by_alias.setdefault(alias, {})[fold(col.name)] = col
    unit = fold(dataset.privacy_unit)
    entries = tuple(
        ScopeEntry(a, cols, unit if f"{a}.{dataset.privacy_unit}" in rel.units else None)
        for a, cols in by_alias.items()
    )
    first = dataset.table(leftmost_table(source))
    assert first is not None
    primary = rel.unit.partition(".")[0]
    return Scope(first, primary, entries, True, primary)


def _outer_unit(outer: Scope, node: dict[str, Any]) -> bool:
    try:
        return outer.lookup(node).is_unit
    except Exception:
        return False


def _filter_conjuncts(e: Expr | None) -> list[Expr]:
    """The top-level AND operands of a typed filter."""
    if e is None:
        return []
    if isinstance(e, Binary) and e.op.upper() == "AND":
        return _filter_conjuncts(e.left) + _filter_conjuncts(e.right)
    return [e]


def _narrow_domain(key: GroupKey, where: Expr | None) -> GroupKey:
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


def _conjuncts(where: Any) -> list[Any]:
    if isinstance(where, dict) and where.get("type") == "CONJUNCTION_AND":
        out: list[Any] = []
        for c in where.get("children") or []:
            out.extend(_conjuncts(c))
        return out
    return [] if where is None else [where]


def _static_kind(col: ColumnInfo) -> str:
    return "num" if col.type in ("int64", "float64") else col.type
