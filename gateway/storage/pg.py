"""PostgreSQL for the gateway's durable state: one database shared by every gateway replica.

The stores (ledger, audit log, governance state, release cache, verification caps) are written against the
small DB-API surface of `sqlite3` (`execute` with ``?`` parameters, `fetchone`/`fetchall`, explicit
``BEGIN``/``COMMIT``). `PgDatabase.connect` hands them a `PgConnection` offering the same surface over a
psycopg 3 connection, translating the few SQLite spellings they use (`translate`), so the SQL of every
store is written once. Each store keeps its own PostgreSQL DDL next to its SQLite DDL (`ddl` translates
the column types; triggers are written per backend).

Concurrency. ``BEGIN IMMEDIATE`` (SQLite's one-writer transaction, which every state change of every store
uses) becomes ``BEGIN`` plus a transaction-scoped advisory lock, ``pg_advisory_xact_lock(WRITE_LOCK)``:
every write transaction of every replica runs one at a time, exactly as writers of one SQLite file do, in
READ COMMITTED, so each statement after the lock sees everything committed before it. The check "spent +
cost <= limit" and the charge it admits are therefore atomic across replicas (no overspend), a request id
is inserted once (no double charge), and audit entries are appended to ONE hash chain in the transaction
that completes the charge they record. Why one lock rather than row locks or SERIALIZABLE with retries:
every completion appends to the single audit chain, so completions serialise on its head anyway; a
reservation reads sums over several scopes (member, organisation, the data owner's cap) that row locks
would have to cover in a fixed order; and a SERIALIZABLE retry would re-run callers' writes (`also=`)
that are not written to be re-run. Transactions are short (a few statements, no sandbox work inside).
Reads outside a transaction run in autocommit; ``BEGIN`` (a consistent multi-table read, e.g. `verify`)
becomes ``BEGIN ISOLATION LEVEL REPEATABLE READ``.

A replica that stops inside a write transaction must not stop the others. Each session is opened with
``idle_in_transaction_session_timeout`` (`PgDatabase.idle_in_transaction_s`, 10 s): a session that holds the
write lock and sends nothing for that long (its process frozen by SIGSTOP or a debugger, its host gone, its
network partitioned) is ended by the server, which releases the lock; the other replicas' writers, waiting
up to ``lock_timeout`` (30 s, longer on purpose), then go on. A killed process needs none of this (its
kernel closes the connection), but a vanished host sends nothing at all. TCP keepalives on both ends
(libpq's ``keepalives*``, the server's ``tcp_keepalives_*``) and ``tcp_user_timeout`` find a dead peer
within about 20 s instead of the system's two hours (a gateway waiting for a vanished server's reply gets
an error instead of waiting forever), and each session's ``application_name`` names the gateway process
(``pgw pid=<pid>``, in ``pg_stat_activity``).

Errors. psycopg errors are raised as `sqlite3.IntegrityError` (constraint violations) or
`sqlite3.OperationalError` (everything else: lock timeout, statement timeout, serialization failure,
deadlock, a connection ended by the server or lost, too many connections, the server shutting down) with
the psycopg error as the cause, so every store's existing error handling (storage failed -> its own
`GatewayError`, UNAVAILABLE with RetryInfo) applies unchanged; a connection that raised is not reused.
"""

from __future__ import annotations

import functools
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import pq
from psycopg.adapt import Loader

__all__ = ["WRITE_LOCK", "PgConnection", "PgCursor", "PgDatabase", "check_reachable", "ddl", "ensure_schema",
           "is_postgres_url", "storage_location", "translate"]

WRITE_LOCK = 0x70677731  # the advisory lock every write transaction holds ("pgw1")


def storage_location(storage_url: str, sqlite_file: Path) -> Path | PgDatabase:
    """Where the gateway's stores live: the PostgreSQL database of `storage_url`, else the SQLite file."""
    return PgDatabase(storage_url) if storage_url else sqlite_file


def check_reachable(database: PgDatabase) -> None:
    """Connect once, or raise a `ConfigError` naming the storage_url setting (a replica refuses to start)."""
    from gateway.errors import ConfigError  # here: the audit log's offline tools must not load grpc (errors does)

    try:
        database.connect().close()
    except sqlite3.Error as exc:
        cause = exc.__cause__
        detail = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else str(exc)
        raise ConfigError("settings", "storage_url", f"cannot connect to {database}: {detail}") from exc


def is_postgres_url(url: str) -> bool:
    """True for a ``postgresql://`` or ``postgres://`` URL."""
    return urlsplit(url).scheme in ("postgresql", "postgres")


class _NumberLoader(Loader):
    """``numeric`` (what ``sum`` of a bigint column returns) as int when integral, else float, as SQLite."""

    def load(self, data: Any) -> int | float:
        value = Decimal(bytes(data).decode("ascii"))
        return int(value) if value == value.to_integral_value() else float(value)


@dataclass(frozen=True, slots=True)
class PgDatabase:
    """A PostgreSQL database named by a libpq URL; equal URLs are the same database (stores join transactions).

    Attributes:
        url: ``postgresql://user@host:port/dbname?...`` (any libpq connection URL).
        lock_timeout_s: How long a statement waits for a lock (another replica's write transaction).
        schema: A schema searched before ``public`` (the verification state's tables, whose names would clash).
        idle_in_transaction_s: How long a session may hold a transaction open while sending nothing before
            the server ends it (releasing the write lock); below `lock_timeout_s`, so waiters outlast it.
        keepalive_s: Idle seconds before TCP keepalive probes, on both ends; a peer that answers none of
            3 probes 5 s apart, or leaves sent data unacknowledged for `keepalive_s` + 15 s, is dead.
    """

    url: str
    lock_timeout_s: float = field(default=30.0, compare=False)
    schema: str = ""  # a schema searched before public (a store whose table names would clash)
    idle_in_transaction_s: float = field(default=10.0, compare=False)
    keepalive_s: int = field(default=5, compare=False)

    def connect(self) -> PgConnection:
        """A new connection in autocommit mode (transactions are explicit ``BEGIN``/``COMMIT``), with the
        session limits of the module docstring."""
        try:
            conn = psycopg.connect(
                self.url, autocommit=True, connect_timeout=10, application_name=f"pgw pid={os.getpid()}",
                keepalives=1, keepalives_idle=self.keepalive_s, keepalives_interval=5, keepalives_count=3,
                tcp_user_timeout=(self.keepalive_s + 15) * 1000)
        except psycopg.Error as exc:
            raise sqlite3.OperationalError(f"cannot connect to PostgreSQL: {type(exc).__name__}") from exc
        conn.adapters.register_loader("numeric", _NumberLoader)
        try:
            conn.execute(  # no parameters: one round trip for every statement
                f"SET lock_timeout = {int(self.lock_timeout_s * 1000)};"
                f" SET idle_in_transaction_session_timeout = {int(self.idle_in_transaction_s * 1000)};"
                f" SET tcp_keepalives_idle = {self.keepalive_s}; SET tcp_keepalives_interval = 5;"
                f" SET tcp_keepalives_count = 3; SET tcp_user_timeout = {(self.keepalive_s + 15) * 1000}"
                + (f"; SET search_path = {self.schema}, public" if self.schema else ""))
        except psycopg.Error as exc:
            conn.close()
            raise sqlite3.OperationalError(f"cannot set up the PostgreSQL session: {type(exc).__name__}") from exc
        return PgConnection(conn)

    def __str__(self) -> str:
        """The URL without its password (for logs and errors)."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        return f"{parts.scheme}://{host}{':' + str(parts.port) if parts.port else ''}{parts.path}"


class PgCursor:
    """The rows of one statement, read like a `sqlite3.Cursor`."""

    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int, names: Sequence[str] = ()) -> None:
        """Rows already fetched (every statement's result is small or wanted whole); `names`: the columns."""
        self._rows = rows
        self._next = 0
        self.rowcount = rowcount
        self.description = tuple((name, None, None, None, None, None, None) for name in names) or None

    def fetchone(self) -> Any:
        """The next row, or None."""
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchall(self) -> list[Any]:
        """The remaining rows."""
        rest, self._next = self._rows[self._next:], len(self._rows)
        return rest

    def __iter__(self) -> Iterator[Any]:
        """The remaining rows, one at a time."""
        while (row := self.fetchone()) is not None:
            yield row


class PgConnection:
    """A psycopg connection with the `sqlite3.Connection` surface the stores use."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        """Wrap an autocommit psycopg connection."""
        self._conn = conn

    @property
    def in_transaction(self) -> bool:
        """True inside ``BEGIN`` ... ``COMMIT``/``ROLLBACK`` (also after a failed statement in one)."""
        return self._conn.info.transaction_status != pq.TransactionStatus.IDLE

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> PgCursor:
        """Run one statement (SQLite spelling, ``?`` parameters); its rows are fetched at once."""
        head = sql.lstrip()[:16].upper()
        if head.startswith("PRAGMA"):
            return PgCursor([], -1)  # durability and journal settings: PostgreSQL commits are durable
        try:
            if head.startswith("BEGIN IMMEDIATE"):
                self._conn.execute(f"BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})")  # one round trip
                return PgCursor([], -1)
            if head.rstrip() == "BEGIN":
                self._conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
                return PgCursor([], -1)
            params = tuple(int(v) if isinstance(v, bool) else v for v in parameters)  # SQLite's booleans
            cur = self._conn.execute(translate(sql), params)
            if cur.description is None:
                return PgCursor([], cur.rowcount)
            return PgCursor(cur.fetchall(), cur.rowcount, [c.name for c in cur.description])
        except psycopg.errors.IntegrityError as exc:
            raise sqlite3.IntegrityError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
        except psycopg.Error as exc:
            raise sqlite3.OperationalError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc

    def executemany(self, sql: str, seq: Iterable[Sequence[Any]], /) -> PgCursor:
        """Run one statement per parameter row."""
        count = 0
        for params in seq:
            count += max(self.execute(sql, params).rowcount, 0)
        return PgCursor([], count)

    def close(self) -> None:
        """Close the connection (an open transaction is rolled back by the server)."""
        self._conn.close()


_STRFTIME = re.compile(r"strftime\('%Y-%m', (\w+), 'unixepoch'\)")
_TOTAL = re.compile(r"\btotal\((\w+)\)")
_MINUTE = re.compile(r"CAST\(([\w.]+) / 60 AS INTEGER\)")
_SQLITE_MASTER = re.compile(r"\bsqlite_master\b")


@functools.lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """SQLite statement text -> PostgreSQL with psycopg's ``%s`` parameters.

    Covers exactly what the stores use: ``?`` parameters, ``strftime('%Y-%m', t, 'unixepoch')``,
    ``total(x)``, ``CAST(t / 60 AS INTEGER)`` (SQLite truncates, PostgreSQL would round: ``floor``),
    ``max(a, b)`` as a scalar is not used on this path, and ``sqlite_master`` table lookups.
    """
    out = _STRFTIME.sub(r"to_char(to_timestamp(\1) AT TIME ZONE 'UTC', 'YYYY-MM')", sql)
    out = _TOTAL.sub(r"CAST(coalesce(sum(\1), 0) AS DOUBLE PRECISION)", out)
    out = _MINUTE.sub(r"CAST(floor(\1 / 60) AS BIGINT)", out)
    out = _SQLITE_MASTER.sub("(SELECT table_name AS name, 'table' AS type FROM information_schema.tables"
                             " WHERE table_schema = current_schema()) AS sqlite_master", out)
    return out.replace("%", "%%").replace("?", "%s")


_TYPES = ((re.compile(r"\bINTEGER PRIMARY KEY\b"), "BIGSERIAL PRIMARY KEY"),
          (re.compile(r"\bINTEGER\b"), "BIGINT"), (re.compile(r"\bREAL\b"), "DOUBLE PRECISION"),
          (re.compile(r"\bBLOB\b"), "BYTEA"), (re.compile(r"\)\s*STRICT(,\s*WITHOUT ROWID)?"), ")"),
          (re.compile(r"--[^\n]*"), ""))


def ddl(sqlite_ddl: str) -> list[str]:
    """A store's SQLite table and index DDL (``;``-separated, no triggers) as PostgreSQL statements."""
    out = sqlite_ddl
    for pattern, repl in _TYPES:
        out = pattern.sub(repl, out)
    return [s.strip() for s in out.split(";") if s.strip()]


def ensure_schema(conn: Any, statements: Sequence[str]) -> None:
    """Run schema statements on a `PgConnection` in one write transaction (replicas starting together
    create the schema once: the others wait on the write lock, then find it)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in statements:
            conn.execute(statement)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


APPEND_ONLY = """
CREATE OR REPLACE FUNCTION pgw_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'the audit log is append-only' USING ERRCODE = 'restrict_violation'; END $$
"""


def append_only_trigger(table: str) -> list[str]:
    """Statements refusing UPDATE and DELETE on `table` (the audit tables)."""
    return [APPEND_ONLY,
            f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}",
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}"
            " FOR EACH ROW EXECUTE FUNCTION pgw_append_only()"]


def json_array_functions(max_args: int = 5) -> list[str]:
    """``json_array(text, ...)`` as SQLite spells it (compact JSON text), for scope keys computed in SQL."""
    out = []
    for n in range(1, max_args + 1):
        args = ", ".join(f"a{i} text" for i in range(n))
        body = " || ',' || ".join(f"to_json(a{i})::text" for i in range(n))
        out.append(f"CREATE OR REPLACE FUNCTION json_array({args}) RETURNS text LANGUAGE sql IMMUTABLE"
                   f" AS $$ SELECT '[' || {body} || ']' $$")
    return out
