"""Parse consumer SQL with DuckDB's own parser, without ever executing it.

The consumer's text only reaches DuckDB as a *parameter* of `json_serialize_sql(?)` (and of
`extract_statements`, which only tokenizes and parses). The connection used for this is a private,
in-memory, locked-down one that holds no data: external access is off, extensions are neither
installed nor loaded automatically, and the configuration is locked.

`parse_select` returns the single SELECT node of DuckDB's JSON parse tree; `gateway.products.query.sql.analyze`
checks that tree against an allowlist and turns it into a typed `QueryPlan`.
"""

from __future__ import annotations

import json
import math
import threading
from typing import Any

import duckdb

from gateway.errors import InvalidQueryError

__all__ = ["MAX_SQL_CHARS", "aggregate_function_names", "evaluate_domain", "parse_select"]

MAX_SQL_CHARS = 20_000
"""Longest accepted query text, in characters."""

_MAX_PARSER_MESSAGE = 200

_CONFIG: dict[str, str | bool | int | float | list[str]] = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
    "allow_community_extensions": False,
    "threads": 1,
    "lock_configuration": True,
}

_lock = threading.Lock()
_con: duckdb.DuckDBPyConnection | None = None
_aggregates: frozenset[str] | None = None


def _connection() -> duckdb.DuckDBPyConnection:
    """Return the parser connection, creating it on first use. Callers must hold `_lock`."""
    global _con
    if _con is None:
        _con = duckdb.connect(":memory:", config=_CONFIG)
    return _con


def aggregate_function_names() -> frozenset[str]:
    """Return the lower-case names of every aggregate function DuckDB knows (aliases included).

    Used to tell an unsupported aggregate (`min`, `list`, ...) from any other function call. The
    list comes from DuckDB's built-in function catalog, read once from the parser connection.
    """
    global _aggregates
    with _lock:
        if _aggregates is None:
            rows = (
                _connection()
                .execute(
                    "SELECT DISTINCT function_name FROM duckdb_functions() "
                    "WHERE function_type = 'aggregate'"
                )
                .fetchall()
            )
            _aggregates = frozenset(str(r[0]).lower() for r in rows)
        return _aggregates


_SQL_TYPES = {"int64": "BIGINT", "float64": "DOUBLE", "string": "VARCHAR", "bool": "BOOLEAN"}


def evaluate_domain(
    expression_sql: str, column: str, column_type: str, values: tuple[Any, ...], cap: int
) -> tuple[Any, ...]:
    """The distinct non-NULL values of a group-key expression over a column's *public* values.

    `expression_sql` is rendered by the sandbox compiler from the typed plan tree (never consumer
    text) and runs on the parser's locked connection, which holds no data: the rows are the column's
    declared domain values, written as literals. Non-finite numbers are dropped (they cannot be keys).

    Raises:
        InvalidQueryError: UNSUPPORTED_EXPRESSION if DuckDB cannot evaluate it.
    """
    from sandbox.plans.render import quote_ident, render_literal  # pure helpers, no engine

    typ = _SQL_TYPES[column_type]
    rows = ", ".join(f"(CAST({render_literal(v)} AS {typ}))" for v in values)
    sql = (
        f"SELECT DISTINCT k FROM (SELECT {expression_sql} AS k FROM (VALUES {rows}) "
        f"AS t({quote_ident(column)})) WHERE k IS NOT NULL ORDER BY 1 LIMIT {int(cap)}"
    )
    with _lock:
        try:
            found = _connection().execute(sql).fetchall()
        except duckdb.Error:
            raise InvalidQueryError(
                "the GROUP BY expression cannot be evaluated over the column's domain",
                reason="UNSUPPORTED_EXPRESSION",
                construct="GROUP_BY_EXPRESSION",
            ) from None
    out: list[Any] = []
    for (v,) in found:
        if isinstance(v, float) and not math.isfinite(v):
            continue
        if not isinstance(v, bool | int | float | str):
            raise InvalidQueryError(
                "the GROUP BY expression must give numbers, strings or booleans",
                reason="UNSUPPORTED_EXPRESSION",
                construct="GROUP_BY_EXPRESSION",
            )
        out.append(v)
    return tuple(out)


def _parser_message(exc: duckdb.Error) -> str:
    """Return the first line of a DuckDB parser error, without its prefix, cut to 200 characters.

    Parser errors only quote the query text itself, so forwarding them reveals no data.
    """
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else "syntax error"
    for prefix in ("Parser Error: ", "Not implemented Error: "):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    if len(text) > _MAX_PARSER_MESSAGE:
        text = text[: _MAX_PARSER_MESSAGE - 3] + "..."
    return text


def _parse_failed(detail: str) -> InvalidQueryError:
    return InvalidQueryError(f"the query could not be parsed: {detail}", reason="SQL_PARSE_FAILED")


def _too_complex() -> InvalidQueryError:
    return InvalidQueryError(
        "expressions may be nested at most 32 levels deep", reason="QUERY_TOO_COMPLEX", limit="32"
    )


def parse_select(sql: str) -> dict[str, Any]:
    """Parse `sql` and return the single SELECT node of DuckDB's JSON parse tree.

    The text is never executed. Checks, in order: size, one statement, statement type SELECT,
    then serialization of the parse tree.

    Args:
        sql: The consumer's query text.

    Returns:
        The statement's `node` object (a `SELECT_NODE`, or a `SET_OPERATION_NODE` for UNION and
        friends, which the analyzer refuses).

    Raises:
        InvalidQueryError: reason `QUERY_TOO_LARGE`, `SQL_PARSE_FAILED`, `MULTIPLE_STATEMENTS`,
            `NOT_A_SELECT`, `QUERY_TOO_COMPLEX`, or `UNSUPPORTED_EXPRESSION` for parameters
            (`?`, `$1`, `$name`).
    """
    if not isinstance(sql, str):
        raise InvalidQueryError("the query must be text", reason="SQL_PARSE_FAILED")
    if len(sql) > MAX_SQL_CHARS:
        raise InvalidQueryError(
            f"the query is longer than {MAX_SQL_CHARS} characters",
            reason="QUERY_TOO_LARGE",
            limit=str(MAX_SQL_CHARS),
        )
    if "\x00" in sql:
        raise _parse_failed("the query contains a NUL character")

    with _lock:
        con = _connection()
        try:
            statements = con.extract_statements(sql)
        except duckdb.Error as exc:
            if "expression depth" in str(exc):
                raise _too_complex() from None
            raise _parse_failed(_parser_message(exc)) from None
        if not statements:
            raise _parse_failed("the query is empty")
        if len(statements) > 1:
            raise InvalidQueryError(
                f"the query holds {len(statements)} statements; send exactly one SELECT",
                reason="MULTIPLE_STATEMENTS",
            )
        kind = statements[0].type.name
        if kind != "SELECT":
            raise InvalidQueryError(
                f"only SELECT queries are allowed; got {kind}",
                reason="NOT_A_SELECT",
                statementType=kind,
            )
        try:
            row = con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
        except duckdb.Error as exc:  # pragma: no cover - json_serialize_sql reports errors in-band
            raise _parse_failed(_parser_message(exc)) from None

    if row is None or not isinstance(row[0], str):  # pragma: no cover - defensive
        raise _parse_failed("the parser returned nothing")
    try:
        tree = json.loads(row[0])
    except RecursionError:
        raise _too_complex() from None
    return _select_node(tree)


def _select_node(tree: Any) -> dict[str, Any]:
    """Validate the envelope of `json_serialize_sql`'s answer and return the statement's node."""
    if not isinstance(tree, dict):  # pragma: no cover - defensive
        raise _parse_failed("unexpected parser output")
    if tree.get("error") is not False:
        message = str(tree.get("error_message", ""))
        if "expression depth" in message:
            raise _too_complex()
        if tree.get("error_type") == "not implemented":
            raise InvalidQueryError("only SELECT queries are allowed", reason="NOT_A_SELECT")
        raise _parse_failed(message[:_MAX_PARSER_MESSAGE] or "unknown parser error")
    if set(tree) != {"error", "statements"}:
        raise _parse_failed("unexpected parser output")
    statements = tree["statements"]
    if not isinstance(statements, list) or len(statements) != 1:
        raise InvalidQueryError("send exactly one SELECT statement", reason="MULTIPLE_STATEMENTS")
    statement = statements[0]
    if not isinstance(statement, dict) or not set(statement) <= {"node", "named_param_map"}:
        raise _parse_failed("unexpected parser output")
    if statement.get("named_param_map", []) != []:
        raise InvalidQueryError(
            "query parameters (?, $1, $name) are not supported; write the values into the query",
            reason="UNSUPPORTED_EXPRESSION",
            construct="PARAMETER",
        )
    node = statement.get("node")
    if not isinstance(node, dict):
        raise _parse_failed("unexpected parser output")
    return node
