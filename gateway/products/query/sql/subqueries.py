"""Subqueries: per-unit pre-aggregation in FROM (`(SELECT unit, SUM(x) ... GROUP BY unit) t`, or a CTE used once),
and the IN / EXISTS filters of WHERE on the privacy unit; scalar subqueries are refused.

The FROM clause reader (`gateway.products.query.sql.sources.Sources`) calls in here and is called back (`Reader`)
for the subquery's own FROM clause.
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway.errors import InvalidQueryError
from gateway.products.query.sql.expressions import convert_filter
from gateway.products.query.sql.nodes import Scope, check_bounded, describe, forbid_nested, function_keys_ok, scope_of
from gateway.products.query.sql.statement import ALIAS, SELECT_KEYS, check_clauses, unsupported
from gateway.products.query.sql.tree import check_keys, fold, reject, show
from sandbox.plans.relation import Relation
from sandbox.protocol.messages import Column, DatasetInfo, Expr, InUnits, Source, UnitAggregate, UnitOutput

__all__ = ["Reader", "semi_join", "unit_aggregate"]


class Reader(Protocol):
    """What a subquery needs of the FROM clause reader: the dataset, and its FROM clause read."""

    @property
    def dataset(self) -> DatasetInfo:
        """The dataset the query reads."""
        ...

    def source(self, ref: Any, depth: int = 0) -> Source:
        """A FROM clause (or a part of one) as a plan source."""
        ...

    def relation(self, source: Source) -> Relation:
        """The relation a source reads (its columns and units)."""
        ...


def unit_aggregate(reader: Reader, node: Any, alias: str, depth: int) -> Source:
    """`(SELECT unit, agg(col) AS x, ... FROM src [WHERE ...] GROUP BY unit) alias`."""
    if not ALIAS.fullmatch(alias):
        raise reject("INVALID_ALIAS", f"alias {show(alias)} is not allowed", alias=show(alias))
    alias = fold(alias)
    if not isinstance(node, dict) or node.get("type") != "SELECT_NODE":
        if isinstance(node, dict) and node.get("type") == "SET_OPERATION_NODE":
            raise unsupported("SET_OPERATION", "UNION/INTERSECT/EXCEPT inside FROM is not "
                               "supported")
        raise unsupported("SUBQUERY", "unsupported subquery")
    check_keys(node, "subquery", free=SELECT_KEYS)
    if node.get("cte_map") not in (None, {}, {"map": []}):
        raise unsupported("CTE", "WITH inside a subquery is not supported")
    mods = node.get("modifiers")
    if mods not in (None, []):
        first = mods[0] if isinstance(mods, list) and mods else {}
        if isinstance(first, dict) and first.get("type") == "DISTINCT_MODIFIER":
            raise reject("SUBQUERY_NOT_ON_PRIVACY_UNIT", "SELECT DISTINCT in a subquery "
                         "forgets how many rows each unit had; group by the unit instead")
        raise unsupported("MODIFIER", "ORDER BY / LIMIT inside a subquery is not supported")
    check_clauses(node)
    if node.get("having") is not None:  # top-level HAVING is post-processing; here it is not
        raise unsupported("HAVING", "HAVING inside a subquery is not supported")
    inner = reader.source(node.get("from_table"), depth + 1)
    if isinstance(inner, UnitAggregate):
        raise unsupported("NESTED_SUBQUERY", "nested per-unit subqueries are not supported")
    rel = reader.relation(inner)
    scope = scope_of(inner, rel, reader.dataset)
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
            f"({reader.dataset.privacy_unit}), so that it yields one row per unit",
        )
    outputs: list[UnitOutput] = []
    for item in node.get("select_list") or []:
        if not isinstance(item, dict):
            raise unsupported("SELECT_LIST", "malformed select list")
        name = str(item.get("alias", ""))
        if name and not ALIAS.fullmatch(name):
            raise reject("INVALID_ALIAS", f"alias {show(name)} is not allowed",
                         alias=show(name))
        if item.get("type") == "COLUMN_REF":
            if not scope.lookup(item | {"alias": ""}).is_unit:
                scope.resolve(item | {"alias": ""})  # identifier/unknown refusals first
                raise reject(
                    "SUBQUERY_NOT_ON_PRIVACY_UNIT",
                    "a per-unit subquery outputs the privacy unit and aggregates only",
                )
            if name and fold(name) != fold(reader.dataset.privacy_unit):
                raise reject("INVALID_ALIAS", "the privacy unit cannot be renamed")
            continue
        outputs.append(_unit_output(item, name, scope))
    if not outputs:
        raise reject("NO_AGGREGATE", "a per-unit subquery needs at least one aggregate")
    names = [o.name for o in outputs]
    if len(set(names)) != len(names) or fold(reader.dataset.privacy_unit) in names:
        raise reject("DUPLICATE_OUTPUT_NAME", "the subquery's outputs need distinct names")
    where = node.get("where_clause")
    filt = None if where is None else convert_filter(where, scope)
    return UnitAggregate(inner, filt, tuple(outputs), alias)


def _unit_output(item: dict[str, Any], name: str, scope: Scope) -> UnitOutput:
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
    if not ALIAS.fullmatch(out):
        raise reject("INVALID_ALIAS", f"name the output of {fname.upper()} with AS")
    return UnitOutput(out, kind, Column(ref.column.name, ref.table))


def semi_join(reader: Reader, node: dict[str, Any], negated: bool, outer: Scope) -> Expr:
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
        raise unsupported("SUBQUERY", "malformed subquery")
    inner_node = sub["node"]
    if not isinstance(inner_node, dict) or inner_node.get("type") != "SELECT_NODE":
        raise unsupported("SET_OPERATION", "set operations inside subqueries are not "
                           "supported")
    check_keys(inner_node, "subquery", free=SELECT_KEYS)
    if inner_node.get("cte_map") not in (None, {}, {"map": []}):
        raise unsupported("CTE", "WITH inside a subquery is not supported")
    if inner_node.get("modifiers") not in (None, []) or inner_node.get(
        "group_expressions"
    ) not in (None, []):
        raise reject("SUBQUERY_NOT_ON_PRIVACY_UNIT", "an IN/EXISTS subquery takes no "
                     "GROUP BY, DISTINCT, ORDER BY or LIMIT")
    check_clauses(inner_node)
    if inner_node.get("having") is not None:  # top-level HAVING is post-processing; here it is not
        raise unsupported("HAVING", "HAVING inside a subquery is not supported")
    for clause in ("select_list", "where_clause"):
        forbid_nested(inner_node.get(clause), scalar=True)
    source = reader.source(inner_node.get("from_table"), 1)
    rel = reader.relation(source)
    scope = scope_of(source, rel, reader.dataset)
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
                f"IN (subquery) is allowed only as {reader.dataset.privacy_unit} IN (SELECT "
                f"{reader.dataset.privacy_unit} FROM ...), a filter on the same unit",
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
        if _is_correlation(c, scope, rel, outer):
            found += 1
        else:
            rest.append(c)
    if found != 1:
        raise reject(
            "SUBQUERY_NOT_ON_PRIVACY_UNIT",
            "EXISTS (subquery) must be correlated on the privacy unit: WHERE "
            f"inner.{reader.dataset.privacy_unit} = outer.{reader.dataset.privacy_unit}",
        )
    filt = None
    if rest:
        combined = rest[0] if len(rest) == 1 else {"type": "CONJUNCTION_AND",
                                                   "children": rest}
        filt = convert_filter(combined, scope)
    return InUnits(source, filt, negated)


def _is_correlation(c: Any, inner: Scope, rel: Relation, outer: Scope) -> bool:
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


def _outer_unit(outer: Scope, node: dict[str, Any]) -> bool:
    try:
        return outer.lookup(node).is_unit
    except Exception:
        return False


def _conjuncts(where: Any) -> list[Any]:
    if isinstance(where, dict) and where.get("type") == "CONJUNCTION_AND":
        out: list[Any] = []
        for c in where.get("children") or []:
            out.extend(_conjuncts(c))
        return out
    return [] if where is None else [where]


def _scalar_subquery() -> InvalidQueryError:
    return reject(
        "SCALAR_SUBQUERY",
        "scalar subqueries can pick out one row's value; they are not allowed",
        construct="SUBQUERY",
    )
