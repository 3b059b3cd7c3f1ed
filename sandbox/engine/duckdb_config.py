"""How the sandbox's DuckDB is opened and locked (docs/threats.md, section 1).

The connection is opened with resource limits and no extension loading, the data is loaded, and
only then is external access switched off and the configuration locked (`lock_down`). After that,
no SQL can read or write a file, change a limit, or load code; the sandbox verifies this before
serving.
"""

from __future__ import annotations

import duckdb

from sandbox.engine.limits import Limits


class LockDownError(RuntimeError):
    """The connection is not in the locked state the sandbox requires; it must not serve."""


def connect_config(limits: Limits) -> dict[str, str | bool | int | float | list[str]]:
    """The `duckdb.connect(config=...)` dict: one entry per threat it closes."""
    return {
        # Threat 1 (code loading): never download an extension (INSTALL from the network)...
        "autoinstall_known_extensions": False,
        # ...never load one implicitly when a function or file type needs it...
        "autoload_known_extensions": False,
        # ...never accept community-signed extensions...
        "allow_community_extensions": False,
        # ...and never accept unsigned ones (`LOAD '/tmp/evil.duckdb_extension'`).
        "allow_unsigned_extensions": False,
        # Threat 1 / FACTS pitfall 1: no temp directory, so none is silently allow-listed once
        # external access is off (SQL could COPY rows there and read them back). Cost: no spilling.
        "temp_directory": "",
        # Threat 8 (memory exhaustion): queries fail with OutOfMemoryException instead of growing
        # the process (RLIMIT_AS on the process is the backstop, FACTS pitfall 13).
        "memory_limit": limits.memory_limit,
        # Threat 8 (CPU exhaustion): bounded parallelism per query.
        "threads": limits.threads,
        # Threat 8 (runaway queries): DuckDB's per-statement timeout (plus a watchdog interrupt).
        # Off (0) while the sandbox loads the data; `lock_down` sets the query deadline.
        "max_execution_time": 0,
        # Threat 1 / 3: settings that may still change after the lock: none.
        "allowed_configs": [],
    }


def connect(limits: Limits) -> duckdb.DuckDBPyConnection:
    """A fresh in-memory DuckDB with the connect-time limits; still open for loading data."""
    return duckdb.connect(":memory:", config=connect_config(limits))


def lock_down(
    con: duckdb.DuckDBPyConnection, limits: Limits | None = None, attached: tuple[str, ...] = (),
) -> None:
    """Set the per-query deadline, switch external access off and the local file system with it, lock, verify.

    `attached` are the paths DuckDB allow-lists for a store file attached read-only before the lock-down
    (`sandbox.engine.disk_store.store_paths`); they are the only allowed paths `verify_locked` accepts.

    Raises:
        LockDownError: a setting is not as required (then the sandbox must refuse to serve).
    """
    if limits is not None:
        # Threat 8: from now on every statement is interrupted after the query deadline.
        con.execute(f"SET max_execution_time = {int(limits.query_timeout_ms)}")
    # Threat 1: every file, network and extension operation now fails with PermissionException.
    con.execute("SET enable_external_access = false")
    # Threat 1: DuckDB allow-lists an attached file's paths even with external access off (SQL could
    # `read_blob` the store file). Disabling the local file system refuses every file operation SQL can
    # name; blocks of an attached store are still read through the handle opened before. (It must be set
    # after external access is off: the other order fails.)
    con.execute("SET disabled_filesystems = 'LocalFileSystem'")
    # Threat 1 / 3: no SET (limits, access, allowed paths, profiling) can change anything now.
    con.execute("SET lock_configuration = true")
    verify_locked(con, attached)


def verify_locked(con: duckdb.DuckDBPyConnection, attached: tuple[str, ...] = ()) -> None:
    """Check the settings `lock_down` established, and that no file can be listed (not even `attached`).

    Raises:
        LockDownError: external access on, configuration unlocked, a path other than `attached`
            allow-listed, or a file operation not refused.
    """
    expected: dict[str, object] = {
        "enable_external_access": False,
        "lock_configuration": True,
        "allowed_directories": [],
        "allowed_paths": sorted(attached),
        "temp_directory": "",
        "autoload_known_extensions": False,
        "autoinstall_known_extensions": False,
        "allow_community_extensions": False,
        "allow_unsigned_extensions": False,
    }
    names = list(expected)
    row = con.execute(
        "SELECT " + ", ".join("current_setting(?)" for _ in names), names
    ).fetchone()
    for name, got in zip(names, row or [None] * len(names), strict=True):
        want = expected[name]
        if name == "allowed_paths" and isinstance(got, list):
            got = sorted(got)  # a set inside DuckDB: its order varies
        if got != want:
            raise LockDownError(f"DuckDB setting {name} is {got!r}, expected {want!r}")
    # `disabled_filesystems` reads as '' even when in force, so it is checked by its effect: listing an
    # allow-listed path (or the root) must be refused.
    try:
        con.execute("SELECT count(*) FROM glob(?)", [attached[-1] if attached else "/"]).fetchall()
    except duckdb.PermissionException:
        return
    raise LockDownError("a file operation was not refused after the lock-down")
