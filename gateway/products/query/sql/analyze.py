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

The analyzer reads one clause per module: the statement's shape (`statement`), FROM with its joins
(`sources`) and subqueries (`subqueries`), GROUP BY keys and their domains (`group_keys`), the select list and
its aggregates (`select_list`), and HAVING / ORDER BY / LIMIT (`postclauses`); what it has collected so far is
a `PlanParts`. This module puts them together in order and checks the plan compiles in the sandbox.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway.products.query.postprocess import PostProcess
from gateway.products.query.sql.expressions import convert_filter
from gateway.products.query.sql.group_keys import check_group_by, narrow_domain
from gateway.products.query.sql.nodes import forbid_nested
from gateway.products.query.sql.parse import parse_select
from gateway.products.query.sql.parts import PlanParts
from gateway.products.query.sql.postclauses import having, post_modifiers
from gateway.products.query.sql.select_list import check_select_list
from gateway.products.query.sql.sources import Sources
from gateway.products.query.sql.statement import (
    SELECT_KEYS,
    check_clauses,
    collect_ctes,
    split_modifiers,
    unsupported,
)
from gateway.products.query.sql.subqueries import semi_join
from gateway.products.query.sql.tree import MAX_GROUPS, check_keys, fold, reject, show
from sandbox.errors import PlanRejectedError
from sandbox.plans.compile import compile_dataset_plan
from sandbox.plans.relation import leftmost_table
from sandbox.plans.render import PlanTooComplexError, TooManyCellsError
from sandbox.protocol.messages import DatasetInfo, QueryPlan

__all__ = ["AnalyzedQuery", "analyze", "analyze_query"]


@dataclass(frozen=True, slots=True)
class AnalyzedQuery:
    """The plan for the sandbox and the post-processing the gateway applies to its release."""

    plan: QueryPlan
    post: PostProcess = field(default_factory=PostProcess)


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
    analyzed = _read(node, dataset)
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


def _read(node: dict[str, Any], dataset: DatasetInfo) -> AnalyzedQuery:
    """Check the top-level query node, then each clause, and assemble the plan."""
    kind = node.get("type")
    if kind == "SET_OPERATION_NODE":
        setop = str(node.get("setop_type", "set operation"))
        setop += " ALL" if node.get("setop_all") else ""
        raise unsupported("SET_OPERATION", f"{show(setop)} is not supported")
    if kind != "SELECT_NODE":
        raise unsupported(show(str(kind)), f"{show(str(kind))} queries are not supported")
    check_keys(node, "SELECT", free=SELECT_KEYS)
    sources = Sources(dataset, collect_ctes(node.get("cte_map")))
    scope, source, relation = sources.check_from(node.get("from_table"))
    parts = PlanParts(dataset, relation=relation, scope=scope)
    unused = set(sources.ctes) - sources.cte_used
    if unused:
        raise unsupported("CTE", f"the common table expression {show(sorted(unused)[0])} "
                          "is not used; remove it")
    modifiers = split_modifiers(node.get("modifiers"))
    check_clauses(node)
    for clause in ("select_list", "group_expressions", "having"):
        forbid_nested(node.get(clause), scalar=True)
    forbid_nested(node.get("where_clause"), allow_subqueries=True)
    for mod in modifiers:
        forbid_nested(mod, scalar=True)
    check_group_by(parts, node.get("group_expressions"), node.get("group_sets"), scope)
    check_select_list(parts, node.get("select_list"), scope)
    where = node.get("where_clause")
    filter_expr = (
        None
        if where is None
        else convert_filter(where, scope, lambda n, neg: semi_join(sources, n, neg, scope))
    )
    if not parts.aggregates:
        raise reject(
            "NO_AGGREGATE",
            "the query has no aggregate; ask for COUNT(*), COUNT(col), SUM(col) or AVG(col)",
        )
    parts.keys = [narrow_domain(k, filter_expr) for k in parts.keys]
    seen: set[str] = set()
    for out in parts.outputs:
        if fold(out.name) in seen:
            raise reject(
                "DUPLICATE_OUTPUT_NAME",
                f"two output columns are named {out.name}; give them distinct aliases",
                name=out.name,
            )
        seen.add(fold(out.name))
    having_node = node.get("having")
    condition = None if having_node is None else having(parts, having_node, scope)
    order_by, limit, offset = post_modifiers(parts, modifiers, scope)
    plan = QueryPlan(
        dataset=dataset.name,
        table=scope.table.name if source is None else leftmost_table(source),
        aggregates=tuple(parts.aggregates),
        outputs=tuple(parts.outputs),
        where=filter_expr,
        group_by=tuple(parts.keys),
        source=source,
    )
    return AnalyzedQuery(plan, PostProcess(condition, order_by, limit, offset))
