"""The charge-once release cache: the same normalized query, caller and data version gets the same release.

Returning an earlier release again is post-processing of an output the caller already paid for, so it costs
nothing; and it takes away the cheapest way to average noise out (asking the same question again). Equivalent
rewrites that normalize to the same plan hit the cache too, because the key is the analyzer's typed plan, not the
SQL text. It is no substitute for charging every distinct release (docs/threats.md, section 5).

The key covers: consumer, dataset, purpose, dataset version, the canonical plan (JSON of the typed tree with its
epsilon weights) and the epsilon the scales were calibrated for. Stored in table `releases` of the ledger's
database (its SQLite file in WAL mode under the state directory, or its PostgreSQL database), so it survives
restarts, is shared by gateway processes, and a fresh release is stored in the same transaction (and fsync) that
completes its charge (`Ledger.complete(..., also=...)`). Releases stored by earlier versions in `cache.sqlite3`
are imported once at start-up. Two identical requests racing each other may both be charged; the first stored
release wins for later ones.
"""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.budgets.ledger import Ledger
from gateway.errors import StorageUnavailableError
from gateway.storage.pg import PgDatabase, ddl, ensure_schema
from gateway.storage.sqlite import ConnectionPool, open_location, prepare_location
from sandbox.protocol.messages import QueryPlan, plan_to_json

_SCHEMA = """
CREATE TABLE IF NOT EXISTS releases (
    key        TEXT PRIMARY KEY,
    consumer   TEXT NOT NULL,
    response   BLOB NOT NULL,
    created_at REAL NOT NULL
)
"""


def cache_key(
    consumer: str,
    dataset: str,
    purpose: str,
    version: str,
    plan: QueryPlan,
    epsilon: float,
    post: str = "",
    delta: float = 0.0,
) -> str:
    """The cache key of a priced query (hex SHA-256 of its canonical description).

    `post` describes the post-processing (HAVING / ORDER BY / LIMIT) applied to the stored response,
    and `delta` the partition-selection delta, so a query differing only in those is not served
    another query's response.
    """
    body = json.dumps(
        [consumer, dataset, purpose, version, plan_to_json(plan), repr(epsilon)]
        + ([post, repr(delta)] if post or delta else []),
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(body.encode()).hexdigest()


class ReleaseCache:
    """Durable key -> serialized release."""

    def __init__(self, path: Path | PgDatabase, *, busy_timeout_s: float = 30.0, legacy: Path | None = None
                 ) -> None:
        """Open (and create) the cache table in the database at `path` (normally the ledger's file or
        PostgreSQL database).

        `legacy` is a cache file of an earlier version: its releases are copied in (the first stored
        release still wins) and the file is renamed to `<name>.imported` (SQLite only).
        """
        prepare_location(path)
        self.path = path
        self.busy_timeout_s = busy_timeout_s
        # Pooled: a connection per call also checkpointed the WAL on every close (extra fsyncs).
        self._pool = ConnectionPool(
            self._connect, lambda: StorageUnavailableError("the release cache's storage failed; retry shortly"))
        if isinstance(path, PgDatabase):
            with self._pool.connection() as con:
                ensure_schema(con, ddl(_SCHEMA))
            return
        with self._pool.connection() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.execute(_SCHEMA)
            if legacy is not None and legacy.is_file():
                con.execute("ATTACH DATABASE ? AS legacy", (str(legacy),))
                try:
                    con.execute("INSERT INTO main.releases SELECT * FROM legacy.releases WHERE true"
                                " ON CONFLICT DO NOTHING")
                finally:
                    con.execute("DETACH DATABASE legacy")
                legacy.replace(legacy.with_name(legacy.name + ".imported"))

    def _connect(self) -> sqlite3.Connection:
        return open_location(self.path, busy_timeout_s=self.busy_timeout_s)

    def get(self, key: str) -> bytes | None:
        """The stored release for `key`, if any."""
        with self._pool.connection() as con:
            row = con.execute("SELECT response FROM releases WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def put(self, key: str, consumer: str, response: bytes) -> None:
        """Store a release; an existing entry for `key` is kept (the first release wins)."""
        with self._pool.connection() as con:
            self.write(con, key, consumer, response)

    def joined_put(self, ledger: object, key: str, consumer: str, response: bytes) -> Callable[[Any], None] | None:
        """`put` as a write in the ledger's completion transaction when both live in one database."""
        if not (isinstance(ledger, Ledger) and ledger.path == self.path):
            return None
        return functools.partial(self.write, key=key, consumer=consumer, response=response)

    @staticmethod
    def write(con: sqlite3.Connection, key: str, consumer: str, response: bytes) -> None:
        """`put` on a connection to the cache's database, inside the caller's transaction."""
        con.execute(
            "INSERT INTO releases (key, consumer, response, created_at) VALUES (?,?,?,?) ON CONFLICT DO NOTHING",
            (key, consumer, response, time.time()),
        )

    def close(self) -> None:
        """Close the pooled connections (later calls still work, on a connection each)."""
        self._pool.close()
