"""Shared SQLite helpers for the gateway's durable state (ledger, governance state, audit log, cache).

Every state change runs in one `BEGIN IMMEDIATE` transaction on a pooled connection (`ConnectionPool`), so
several threads and several gateway processes sharing a state directory serialise their writes. The threads
of one process queue for a file's write lock in arrival order first (`queued_writer`), so SQLite's own busy
handler, which polls with growing sleeps, only arbitrates between processes. These
helpers are SQLite's; callers program against the Protocols in `gateway/budgets/stores.py`, so another backend
(PostgreSQL) brings its own helpers with its own store classes.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import deque
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


class FairLock:
    """A lock granted in arrival order, with a timeout.

    The state's writers queue here before SQLite's `BEGIN IMMEDIATE`: SQLite's own busy handler polls with
    growing sleeps, so with dozens of threads waiting for its write lock a late arrival can win again and
    again while an early one sleeps past its busy timeout ("database is locked"). In arrival order, a
    writer waits for the transactions queued ahead of it, and SQLite's busy timeout is left to writers of
    other processes.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._held = False
        self._queue: deque[threading.Event] = deque()

    def acquire(self, timeout: float) -> bool:
        """True once held; False after `timeout` seconds in the queue (then not held)."""
        with self._mutex:
            if not self._held:
                self._held = True
                return True
            turn = threading.Event()
            self._queue.append(turn)
        if turn.wait(timeout):
            return True
        with self._mutex:
            if turn.is_set():  # handed over just as the wait ended
                return True
            self._queue.remove(turn)
            return False

    def release(self) -> None:
        """Hand the lock to the longest waiter, or free it."""
        with self._mutex:
            if self._queue:
                self._queue.popleft().set()
            else:
                self._held = False


class WriterQueue:
    """The write turn of one database file among this process's threads: `FairLock` order, reentrant (a
    thread that already holds the turn, inside one transaction, passes through: SQLite then decides as before)."""

    def __init__(self) -> None:
        self._lock = FairLock()
        self._owner: int | None = None

    @contextmanager
    def turn(self, timeout: float, error: Callable[[], Exception]) -> Iterator[None]:
        """Hold the file's write turn for the body; `error()` when it does not come within `timeout` seconds."""
        me = threading.get_ident()
        if self._owner == me:
            yield
            return
        if not self._lock.acquire(timeout):
            raise error()
        self._owner = me
        try:
            yield
        finally:
            self._owner = None
            self._lock.release()


class GroupSync:
    """Group commit for one SQLite file in WAL mode: one fsync of the write-ahead log makes every transaction
    committed before it durable, so the threads that commit while an fsync runs share the next one.

    A writer commits with ``synchronous=NORMAL`` (SQLite writes the transaction's frames to the WAL without an
    fsync), takes a ticket (`committed`) and gives up the file's write turn; then `wait(ticket)` returns once an
    fsync that began after the ticket was taken has finished: one waiting thread runs it, the others wait for
    it. Durability is what ``synchronous=FULL`` gives a WAL commit (the frames fsynced before the caller goes
    on); the difference is that the fsync runs outside the write lock and covers every commit made before it
    started, whichever thread or connection made it. fsync acts on the file, not the descriptor, so the
    frames SQLite wrote through its own descriptor are flushed by ours. A WAL that is gone was checkpointed
    into the database file (a checkpoint fsyncs both), and the database file is synced instead.

    An fsync that fails leaves the state of the file unknown (the kernel may have dropped the unwritten
    pages), so every later `wait` fails too, until the process restarts: nothing committed after an fsync
    error is ever reported durable.
    """

    def __init__(self, database: Path) -> None:
        """Group the commits to the SQLite file `database` (its WAL is `<database>-wal`)."""
        self._database = database
        self._wal = Path(f"{database}-wal")
        self._cond = threading.Condition()
        self._committed = 0
        self._synced = 0
        self._syncing = False
        self._failed: OSError | None = None
        self.fsyncs = 0

    def committed(self) -> int:
        """A ticket for a transaction that has just committed (its frames are written, not yet synced)."""
        with self._cond:
            self._committed += 1
            return self._committed

    def wait(self, ticket: int, error: Callable[[], Exception]) -> None:
        """Return once the transaction of `ticket` is on disk; `error()` if an fsync failed."""
        with self._cond:
            while self._synced < ticket:
                if self._failed is not None:
                    raise error() from self._failed
                if self._syncing:
                    self._cond.wait()
                    continue
                self._syncing = True
                target = self._committed
                self._cond.release()
                failure: OSError | None = None
                try:
                    self._fsync()
                except OSError as exc:
                    failure = exc
                finally:
                    self._cond.acquire()
                    self._syncing = False
                    self._cond.notify_all()
                if failure is not None:
                    self._failed = failure
                    raise error() from failure
                self._synced = max(self._synced, target)
                self.fsyncs += 1
            if self._failed is not None and self._synced < ticket:
                raise error() from self._failed

    def _fsync(self) -> None:
        try:
            fd = os.open(self._wal, os.O_RDONLY)
        except FileNotFoundError:
            fd = os.open(self._database, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_queues: dict[str, WriterQueue] = {}
_syncs: dict[str, GroupSync] = {}
_queues_lock = threading.Lock()


def writer_queue(location: Path | str | PgDatabase) -> WriterQueue:
    """The one `WriterQueue` of this process for the database at `location` (every store on the file, or on
    the PostgreSQL database, shares it)."""
    key = location.url if isinstance(location, PgDatabase) else os.path.realpath(location)
    with _queues_lock:
        q = _queues.get(key)
        if q is None:
            q = _queues[key] = WriterQueue()
        return q


def group_sync(location: Path) -> GroupSync:
    """The one `GroupSync` of this process for the SQLite file at `location`."""
    key = os.path.realpath(location)
    with _queues_lock:
        g = _syncs.get(key)
        if g is None:
            g = _syncs[key] = GroupSync(Path(key))
        return g


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
