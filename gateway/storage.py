"""Shared SQLite helpers for the gateway's durable state (ledger, governance state, audit log, cache).

Every state change runs in one `BEGIN IMMEDIATE` transaction on a short-lived connection, so several
threads and several gateway processes sharing a state directory serialise their writes. A PostgreSQL
backend would replace these helpers (`SELECT ... FOR UPDATE` in a serializable transaction) behind the
same module APIs.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager


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
