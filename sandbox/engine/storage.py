"""Where the sandbox keeps the loaded tables: an attached in-memory database with lightweight compression.

DuckDB compresses an in-memory database only when it is attached with `(COMPRESS)`, and only at a
checkpoint; the default in-memory database is never compressed. The engine therefore loads every table
into `STORE` and checkpoints it once, before the lock-down. Numeric codecs are disabled (`open_store`):
strings get DuckDB's dictionary/FSST encoding, so a GROUP BY or a filter on a string column works on small
dictionary codes (10M residents: GROUP BY region 150 -> 43 ms, WHERE region = ... 83 -> 17 ms), while
integers and doubles stay plain arrays, which a SUM reads faster than bit-packed or ALP-coded ones (10M
incomes: 8.3 ms bit-packed against 5.5 ms plain).

Every SQL producer names a stored table with `table_ref` (a view in the default database would cost each
query about 0.45 ms of binding), and the SQL guards accept exactly that qualification (`is_loaded_table`).
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass
from typing import Any

import duckdb

from sandbox.plans.names import STORE, sql_table_name, table_ref

__all__ = [
    "STORE", "DerivedTable", "attach_store", "compress", "is_loaded_table", "open_store", "sql_table_name",
    "store_codecs", "table_ref",
]

# Disabled for the store: every codec that stores numbers other than as a plain array (see the docstring).
_NUMERIC_CODECS = "bitpacking,alp,alprd,chimp,patas,zstd"


@dataclass(frozen=True, slots=True)
class DerivedTable:
    """A table computed from the loaded tables at load (a verification template's table).

    `select` reads the loaded tables through `table_ref` only, so it runs unchanged on the engine's
    connection and on an on-disk store's build connection; `name` is a bare table name.
    """

    name: str
    select: str


def open_store(con: duckdb.DuckDBPyConnection) -> None:
    """Attach the empty store to a connection that is still open for loading."""
    con.execute(f"ATTACH ':memory:' AS {STORE} (COMPRESS)")
    con.execute(f"SET disabled_compression_methods = '{_NUMERIC_CODECS}'")


def store_codecs() -> str:
    """The compression methods disabled in the store (in memory or on disk): the numeric codecs."""
    return _NUMERIC_CODECS


def sql_path(path: str) -> str:
    """`path` as a SQL string literal."""
    if "\x00" in path:
        raise ValueError("path contains NUL")
    return "'" + path.replace("'", "''") + "'"


def attach_store(con: duckdb.DuckDBPyConnection, path: str) -> None:
    """Attach the on-disk store file `path` read-only as the store (before the lock-down)."""
    con.execute(f"ATTACH {sql_path(path)} AS {STORE} (READ_ONLY)")


def compress(con: duckdb.DuckDBPyConnection) -> None:
    """Write the loaded tables in compressed form (once, after the last load, before the lock-down)."""
    con.execute(f"CHECKPOINT {STORE}")


def is_loaded_table(src: Mapping[str, Any], tables: Set[str]) -> bool:
    """True when a parsed BASE_TABLE node names a table of `tables`, bare or as `table_ref` renders it."""
    name = src.get("table_name")
    if name not in tables:
        return False
    catalog, schema = src.get("catalog_name", ""), src.get("schema_name", "")
    path = src.get("qualified_name", {"path": [name]})
    if not catalog and not schema:
        return bool(path == {"path": [name]})
    return bool(catalog == STORE and schema == "main" and path == {"path": [STORE, "main", name]})
