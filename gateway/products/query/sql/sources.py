"""FROM: plain tables of the dataset, joins on the privacy unit (INNER, LEFT), public lookup tables joined on their
unique key, and per-unit subqueries (`gateway.products.query.sql.subqueries`); every table is one of the dataset's,
named bare."""

from __future__ import annotations

from typing import Any

from gateway.errors import InvalidQueryError
from gateway.products.query.sql.nodes import Scope, scope_entry, scope_of
from gateway.products.query.sql.statement import ALIAS, unsupported
from gateway.products.query.sql.subqueries import unit_aggregate
from gateway.products.query.sql.tree import check_keys, fold, reject, show
from sandbox.errors import PlanRejectedError
from sandbox.plans.relation import MAX_TABLES, Relation, leftmost_table, source_relation
from sandbox.protocol.messages import (
    Column,
    ColumnInfo,
    DatasetInfo,
    PublicJoin,
    Source,
    TableInfo,
    TableSource,
    UnitAggregate,
    UnitJoin,
)

__all__ = ["Sources"]

_SHOW = {"DESCRIBE": "DESCRIBE", "SUMMARY": "SUMMARIZE", "SHOW": "SHOW", "SHOW_SPECIAL": "SHOW"}
_TABLE_REFS = {
    "JOIN": ("JOIN", "joins are not supported yet"),
    "SUBQUERY": ("SUBQUERY", "subqueries are not supported yet"),
    "EXPRESSION_LIST": ("VALUES", "VALUES lists are not supported; query a table of the dataset"),
    "EMPTY": ("NO_FROM", "a query must read a table of the dataset (FROM is missing)"),
}


class Sources:
    """Reads a query's FROM clause (and, for subqueries, theirs) into a plan source; holds the query's CTEs, each
    of which may be used once."""

    def __init__(self, dataset: DatasetInfo, ctes: dict[str, dict[str, Any]]) -> None:
        """Read against `dataset`'s tables, with the query's CTEs (`statement.collect_ctes`) by folded name."""
        self.dataset = dataset
        self.ctes = ctes
        self.cte_used: set[str] = set()

    def check_from(self, ref: Any) -> tuple[Scope, Source | None, Relation | None]:
        """The query's scope, and its source and relation unless it reads one plain table (then None)."""
        if (
            isinstance(ref, dict)
            and ref.get("type") == "BASE_TABLE"
            and fold(str(ref.get("table_name"))) not in self.ctes
        ):
            table, alias = self.base_table(ref)
            if table.public:
                raise reject(
                    "PUBLIC_TABLE_ALONE",
                    f"{table.name} is a public lookup table; join it to a table of the dataset",
                    table=table.name,
                )
            return Scope(table, alias, unit=self.dataset.privacy_unit), None, None
        source = self.source(ref)
        rel = self.relation(source)
        return scope_of(source, rel, self.dataset), source, rel

    def relation(self, source: Source) -> Relation:
        """The relation `source` reads (at most `MAX_TABLES` tables)."""
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

    def base_table(self, ref: dict[str, Any]) -> tuple[TableInfo, str]:
        """A table of the dataset named bare in FROM, and its folded alias; any other FROM item is refused."""
        if not isinstance(ref, dict):
            raise unsupported("FROM", "malformed FROM clause")
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
            raise unsupported(
                what, f"{what} is not supported; the public catalog describes the tables"
            )
        if kind in _TABLE_REFS:
            raise unsupported(*_TABLE_REFS[kind])
        if kind != "BASE_TABLE":
            raise unsupported(show(kind), f"{show(kind)} in FROM is not supported")
        if ref.get("sample") is not None:
            raise unsupported("TABLESAMPLE", "TABLESAMPLE is not supported")
        if ref.get("at_clause") is not None:
            raise unsupported("AT", "AT (time travel) is not supported")
        if ref.get("column_name_alias", []) != []:
            raise unsupported("COLUMN_ALIASES", "column aliases in FROM are not supported")
        name = ref.get("table_name")
        if ref.get("schema_name", "") != "" or ref.get("catalog_name", "") != "":
            raise unsupported(
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
        if alias and not ALIAS.fullmatch(alias):
            raise reject("INVALID_ALIAS", f"alias {show(alias)} is not allowed", alias=show(alias))
        for table in self.dataset.tables:
            if fold(table.name) == fold(name):
                return table, fold(alias) if alias else fold(table.name)
        raise reject("UNKNOWN_TABLE", "unknown table")

    def source(self, ref: Any, depth: int = 0) -> Source:
        """A FROM item (a table, a join, a per-unit subquery or CTE) as a plan source."""
        if depth > 8:
            raise reject("QUERY_TOO_COMPLEX", "FROM is nested too deeply", limit="8")
        kind = ref.get("type") if isinstance(ref, dict) else None
        if kind == "JOIN":
            return self._join(ref, depth)
        if kind == "SUBQUERY":
            assert isinstance(ref, dict)
            if ref.get("sample") is not None:
                raise unsupported("TABLESAMPLE", "TABLESAMPLE is not supported")
            check_keys(ref, "subquery", free=frozenset({"subquery", "alias"}),
                       defaults={"column_name_alias": [], "sample": None})
            sub = ref.get("subquery")
            if not isinstance(sub, dict) or not set(sub) <= {"node", "named_param_map"} or sub.get(
                "named_param_map", []
            ) != []:
                raise unsupported("SUBQUERY", "malformed subquery")
            return unit_aggregate(self, sub["node"], str(ref.get("alias", "")) or "subquery",
                                        depth)
        if kind == "BASE_TABLE":
            assert isinstance(ref, dict)
            name = fold(str(ref.get("table_name")))
            if name in self.ctes and ref.get("schema_name", "") == "":
                if name in self.cte_used:
                    raise unsupported("CTE_REUSED", f"the common table expression {show(name)} "
                                       "may be used only once")
                self.cte_used.add(name)
                alias = str(ref.get("alias", "")) or name
                return unit_aggregate(self, self.ctes[name], alias, depth)
        table, alias = self.base_table(ref)
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
        left = self.source(ref.get("left"), depth + 1)
        right_ref = ref.get("right")
        if not isinstance(right_ref, dict) or right_ref.get("type") != "BASE_TABLE" or fold(
            str(right_ref.get("table_name"))
        ) in self.ctes:
            rtype = right_ref.get("type") if isinstance(right_ref, dict) else None
            if rtype == "JOIN":
                raise reject("UNSUPPORTED_JOIN", "parenthesised joins are not supported")
            if rtype == "BASE_TABLE":
                assert isinstance(right_ref, dict)
                self.source(right_ref, depth + 1)  # a CTE used twice is refused there
            elif rtype != "SUBQUERY":
                self.base_table(right_ref or {})  # table functions, VALUES, ... get their reason
            raise reject("UNSUPPORTED_JOIN", "the right side of a join must be a table of the "
                         "dataset; put subqueries first")
        table, alias = self.base_table(right_ref)
        right = TableSource(table.name, alias)
        if _count_tables(left) + 1 > MAX_TABLES:
            raise reject("TOO_MANY_JOINS", f"a query may read at most {MAX_TABLES} tables",
                         limit=str(MAX_TABLES))
        lrel = self.relation(left)
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
        lscope = scope_of(left, lrel, self.dataset)
        rentry = scope_entry(alias, table, self.dataset)
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


def _not_on_unit() -> InvalidQueryError:
    return reject(
        "JOIN_NOT_ON_PRIVACY_UNIT",
        "tables of the dataset may only be joined ON a.<unit> = b.<unit> (or USING (<unit>)); "
        "any other condition can pair one unit's rows with many others",
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


def _static_kind(col: ColumnInfo) -> str:
    return "num" if col.type in ("int64", "float64") else col.type
