"""What every model computation in the sandbox shares: the guard its SQL runs under (defence in depth, like
`sandbox.engine.guard`, with the few extra functions models need), the SQL of its terms and label (all identifiers
quoted, all literals rendered by type), its exact sums read back as i64, their OpenDP releases, and bootstrap
intervals of the released values."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import duckdb
import numpy as np
import opendp.prelude as dp

from sandbox.engine.engine import Engine
from sandbox.engine.guard import single_select_node
from sandbox.engine.storage import is_loaded_table
from sandbox.errors import PlanRejectedError
from sandbox.plans.render import quote_ident, render_literal
from sandbox.pricing import mechanisms
from sandbox.pricing import models as mp
from sandbox.protocol.models import Estimate, ModelCost

__all__ = [
    "BOOTSTRAP_DRAWS",
    "BOOT_NOTE",
    "I64_LIMIT",
    "check_model_select",
    "exact_ints",
    "gaussian_accuracy",
    "gaussian_release",
    "interval",
    "label_sql",
    "laplace_release",
    "quantize",
    "raw_term_sql",
    "run_model_select",
    "scaled_label_sql",
    "scaled_term_sql",
    "sql_number",
]

BOOTSTRAP_DRAWS = 200
I64_LIMIT = 2**62  # exact sums are clamped into i64 before noise (1-Lipschitz per coordinate)
BOOT_NOTE = "parametric bootstrap of the DP noise (approximate; noise only, not sampling error)"


# ---------------------------------------------------------------------------------------------------
# Guarded execution (defence in depth, like sandbox.engine.guard, with the few extra functions models need)
# ---------------------------------------------------------------------------------------------------

_FUNCTIONS = frozenset(
    {"count_star", "count", "sum", "least", "greatest", "exp", "round", "sqrt", "abs", "floor",
     "+", "-", "*", "/"}
)
_CLASSES = frozenset(
    {"COLUMN_REF", "CONSTANT", "FUNCTION", "CAST", "COMPARISON", "CONJUNCTION", "OPERATOR", "CASE",
     "TYPE"}
)
_OPERATORS = frozenset({"OPERATOR_COALESCE", "OPERATOR_NOT", "OPERATOR_IS_NULL",
                        "OPERATOR_IS_NOT_NULL"})
_NODE_KEYS = frozenset(
    {"type", "cte_map", "select_list", "from_table", "where_clause", "group_expressions",
     "group_sets", "aggregate_handling", "query_location", "query_location_length"}
)


_TABLE_KEYS = frozenset(
    {"type", "table_name", "schema_name", "catalog_name", "qualified_name", "query_location",
     "query_location_length"}
)
_SUBQUERY_KEYS = frozenset({"type", "alias", "subquery", "query_location", "query_location_length"})


def _refuse(why: str) -> PlanRejectedError:
    return PlanRejectedError(f"refused by the model SQL guard: {why}")


def check_model_select(con: duckdb.DuckDBPyConnection, sql: str, tables: frozenset[str]) -> None:
    """Refuse `sql` unless it is one aggregate SELECT over one loaded table with allowed functions."""
    _check_node(single_select_node(con, sql, _refuse), tables, 0)


def _check_node(node: Any, tables: frozenset[str], depth: int) -> None:
    """A SELECT over one loaded table, or over a derived table (a nested SELECT, at most 4 deep)."""
    if not isinstance(node, dict) or node.get("type") != "SELECT_NODE" or not set(node) <= _NODE_KEYS:
        raise _refuse("unsupported query shape")
    if node.get("cte_map", {}) not in ({}, {"map": []}):
        raise _refuse("common table expressions")
    src = node.get("from_table", {})
    if src.get("type") == "SUBQUERY" and depth < 4 and set(src) <= _SUBQUERY_KEYS:
        _check_node(src.get("subquery", {}).get("node"), tables, depth + 1)
    elif src.get("type") != "BASE_TABLE" or not is_loaded_table(src, tables) or set(src) - _TABLE_KEYS:
        raise _refuse("the source must be one loaded table")
    for key in ("select_list", "where_clause", "group_expressions"):
        _walk(node.get(key), 0)


def _walk(e: Any, depth: int) -> None:
    if depth > 2000:
        raise _refuse("expression too deep")
    if isinstance(e, list):
        for x in e:
            _walk(x, depth + 1)
        return
    if not isinstance(e, dict):
        return
    cls = e.get("class")
    if cls is not None:
        if cls not in _CLASSES:
            raise _refuse(f"expression class {cls}")
        if cls == "FUNCTION" and (e.get("function_name") not in _FUNCTIONS or e.get("distinct")):
            raise _refuse(f"function {e.get('function_name')!r}")
        if cls == "OPERATOR" and e.get("type") not in _OPERATORS:
            raise _refuse(f"operator {e.get('type')}")
        if cls == "TYPE" and e.get("type_name") not in ("DOUBLE", "BIGINT"):
            raise _refuse("cast target")
        if cls == "COLUMN_REF" and len(e.get("column_names", ())) != 1:
            raise _refuse("qualified column reference")
    for k, v in e.items():
        if k != "qualified_name":
            _walk(v, depth + 1)


def run_model_select(engine: Engine, sql: str) -> list[tuple[Any, ...]]:
    """Run one model SELECT through the engine's guarded, deadline-interrupted runner."""
    tables = frozenset(engine.row_counts)
    return engine.run_guarded(sql, lambda cur: check_model_select(cur, sql, tables))


def sql_number(x: float) -> str:
    """A finite number as a DOUBLE literal."""
    if not math.isfinite(x):
        raise ValueError("non-finite literal")
    return f"CAST({x!r} AS DOUBLE)"


def raw_term_sql(t: mp.Term) -> str:
    """The term in original units, clamped to the declared bounds (NULL -> the midpoint / 0)."""
    col = quote_ident(t.column)
    if t.kind == "bool":
        return f"(CASE WHEN {col} THEN 1.0 ELSE 0.0 END)"
    if t.kind == "indicator":
        return f"(CASE WHEN {col} = {render_literal(t.value)} THEN 1.0 ELSE 0.0 END)"
    mid = (t.lower + t.upper) / 2
    return (f"least(greatest(COALESCE(CAST({col} AS DOUBLE), {sql_number(mid)}), {sql_number(t.lower)}), "
            f"{sql_number(t.upper)})")


def scaled_term_sql(t: mp.Term) -> str:
    """The term scaled into [-1, 1] (z = a x + c)."""
    if t.kind != "numeric":
        return raw_term_sql(t)
    a, c = t.scale()
    return f"({sql_number(a)} * {raw_term_sql(t)} + {sql_number(c)})"


def quantize(expr: str) -> str:
    """round(expr * 2^16) as BIGINT, clamped to [-2^16, 2^16] (expr is in [-1, 1] up to rounding)."""
    return f"least(greatest(CAST(round(({expr}) * {mp.Q}) AS BIGINT), {-mp.Q}), {mp.Q})"


def scaled_label_sql(label: mp.Label) -> str:
    """The label clamped to its bounds and scaled into [-1, 1]."""
    col = quote_ident(label.column)
    width = label.upper - label.lower
    clamped = f"least(greatest(CAST({col} AS DOUBLE), {sql_number(label.lower)}), {sql_number(label.upper)})"
    return f"({sql_number(2 / width)} * {clamped} + {sql_number(-(label.lower + label.upper) / width)})"


def label_sql(label: mp.Label) -> str:
    """A boolean label as 1.0 / 0.0."""
    return f"(CASE WHEN {quote_ident(label.column)} THEN 1.0 ELSE 0.0 END)"


def exact_ints(row: Sequence[Any]) -> list[int]:
    """Exact integer aggregates (NULL: 0) clamped into i64 before noise."""
    out = []
    for v in row:
        if v is None:
            v = 0  # SUM over no rows
        if isinstance(v, bool) or not isinstance(v, int):
            raise RuntimeError("non-integer exact aggregate")
        out.append(max(-I64_LIMIT, min(I64_LIMIT, v)))
    return out


def laplace_release(cost: ModelCost, exact: list[int]) -> list[int]:
    """OpenDP's discrete Laplace release of an exact vector at the cost's scale."""
    meas = mechanisms.make_measurement(True, cost.scale)
    return [int(v) for v in meas(exact)]


def gaussian_release(scale: float, exact: list[int]) -> list[int]:
    """OpenDP's discrete Gaussian release of an exact vector."""
    return [int(v) for v in mp.gaussian_measurement(scale)(exact)]


@functools.lru_cache(maxsize=256)
def gaussian_accuracy(scale: float) -> float:
    """OpenDP's 95% accuracy of a discrete Gaussian (about 1 s at the scales of a logistic fit; the same
    scale recurs for the same design and privacy loss, so it is cached)."""
    return float(dp.discrete_gaussian_scale_to_accuracy(scale, mechanisms.ALPHA))


def interval(name: str, value: float, draws: np.ndarray[Any, Any], note: str = BOOT_NOTE) -> Estimate:
    """A released value with the 95% interval of its bootstrap draws (none when the draws are unstable)."""
    finite = draws[np.isfinite(draws)]
    if not math.isfinite(value):
        value = 0.0
    if finite.size < len(draws) * 0.9:
        return Estimate(name, float(value), note="no interval: unstable under the noise")
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return Estimate(name, float(value), float(lo), float(hi), note)
