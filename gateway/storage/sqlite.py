"""Shared SQLite helpers for the gateway's durable state (ledger, governance state, audit log, cache).

Every state change runs in one `BEGIN IMMEDIATE` transaction on a pooled connection (`ConnectionPool`), so
several threads and several gateway processes sharing a state directory serialise their writes. These
helpers are SQLite's; callers program against the Protocols in `gateway/budgets/stores.py`, so another backend
(PostgreSQL) brings its own helpers with its own store classes.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import cast

from gateway.storage.pg import PgDatabase


@contextmanager
def connection(
    open_: Callable[[], sqlite3.Connection], error: Callable[[], Exception]
) -> Iterator[sqlite3.Connection]:
    """A short-lived connection from `open_`, closed afterwards; any sqlite3 error becomes `error()`.

    The SQLite text (locked past the busy timeout, disk full, corruption) stays in the exception's cause,
    for the server log; callers see only their module's own error.
    """
    try:
        conn = open_()
        try:
            yield conn
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise error() from exc


@contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Run the body in BEGIN IMMEDIATE; commit on success, roll back on any exception."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class ConnectionPool:
    """Open SQLite connections to one file, reused across calls (and threads, one user at a time).

    A fresh connection per call costs 0.2-0.5 ms (open, PRAGMAs, schema read) and, for a file nobody
    else holds open, a WAL checkpoint with extra fsyncs when it closes; a request makes a dozen such
    calls. Pooled connections are opened with ``check_same_thread=False`` by ``open_`` and handed to
    one caller at a time; a connection that raised a sqlite3 error, or is still inside a transaction,
    is closed instead of being returned. Durability is unchanged: every connection keeps the
    ``synchronous`` setting ``open_`` gave it, and each transaction still commits (and fsyncs) on its own.
    """

    def __init__(
        self, open_: Callable[[], sqlite3.Connection], error: Callable[[], Exception], *, max_idle: int = 16
    ) -> None:
        """Pool connections made by `open_`; sqlite3 errors become `error()`; keep at most `max_idle`."""
        self._open = open_
        self._error = error
        self._max_idle = max_idle
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        """A connection for the body; any sqlite3 error becomes `error()` (SQLite text in the cause)."""
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        reusable = False
        try:
            if conn is None:
                conn = self._open()
            try:
                yield conn
            except sqlite3.Error:
                raise
            except BaseException:  # e.g. a refusal raised inside a rolled-back transaction
                reusable = not conn.in_transaction
                raise
            reusable = not conn.in_transaction
        except sqlite3.Error as exc:
            raise self._error() from exc
        finally:
            if conn is not None:
                with self._lock:
                    keep = reusable and not self._closed and len(self._idle) < self._max_idle
                    if keep:
                        self._idle.append(conn)
                if not keep:
                    conn.close()

    def close(self) -> None:
        """Close every idle connection; connections in use are closed when they come back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def open_location(location: Path | PgDatabase, *, busy_timeout_s: float) -> sqlite3.Connection:
    """A connection to a store's database: the SQLite file `location` (autocommit, ``synchronous=FULL``), or
    a PostgreSQL database (`gateway.storage.pg.PgConnection`, which offers the part of `sqlite3.Connection`
    the stores use and is typed as one for them)."""
    if isinstance(location, PgDatabase):
        return cast(sqlite3.Connection, location.connect())
    conn = sqlite3.connect(location, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA synchronous = FULL")
    except BaseException:
        conn.close()
        raise
    return conn


def prepare_location(location: Path | PgDatabase) -> None:
    """Create a SQLite file's directory (a PostgreSQL database needs nothing)."""
    if isinstance(location, Path):
        location.parent.mkdir(parents=True, exist_ok=True)
