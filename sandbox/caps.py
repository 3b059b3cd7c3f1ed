"""The data owner's own cap ledger: epsilon per dataset per period across ALL organisations.

The sandbox charges it in `Engine.execute` after pricing a plan and before touching data, in its own
SQLite file under the data owner's state directory (`python -m sandbox --state-dir`). The gateway
checks the same caps from the catalog so consumers get a clean refusal, but only this ledger is the
data owner's word: a misconfigured or compromised gateway cannot spend past it.

Charges are keyed by the request id the gateway sends (scoped per consumer); an id that was already
charged is refused and never run again, so a replay is never charged twice and never gets fresh noise.
Sums are exact integer units (see `sandbox.periods`), checked and written in one `BEGIN IMMEDIATE`.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Literal

from sandbox.errors import CAP_MESSAGE, DUPLICATE_MESSAGE
from sandbox.periods import DELTA_UNITS, EPSILON_UNITS, from_units, to_units

__all__ = ["CAP_MESSAGE", "DUPLICATE_MESSAGE", "CapLedger", "CapOutcome"]



CapOutcome = Literal["charged", "exceeded", "duplicate"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cap_charges (
    request_id    TEXT PRIMARY KEY,
    dataset       TEXT NOT NULL,
    epsilon_units INTEGER NOT NULL CHECK (epsilon_units >= 0),
    delta_units   INTEGER NOT NULL CHECK (delta_units >= 0),
    created_at    REAL NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS cap_charges_by_dataset ON cap_charges (dataset, created_at);
"""


class CapLedger:
    """Durable per-dataset cap accounting; safe across threads and processes on one host."""

    def __init__(self, path: Path, *, busy_timeout_s: float = 30.0) -> None:
        """Open (creating if needed) the cap ledger file."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_s = busy_timeout_s
        self._lock = threading.Lock()
        conn = self._open()
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.executescript(_SCHEMA)
        finally:
            conn.close()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None)
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def charge(
        self,
        request_id: str,
        dataset: str,
        epsilon: float,
        delta: float,
        *,
        cap_epsilon: float,
        cap_delta: float,
        window_start: float | None,
        window_end: float | None,
        now: float,
    ) -> CapOutcome:
        """Charge a plan's cost against the dataset's cap for the window containing `now`.

        Returns:
            'charged' (durable before returning), 'exceeded' (nothing written) or 'duplicate' (the
            request id was charged before; nothing written, the plan must not run).
        """
        eps_u = to_units(epsilon, EPSILON_UNITS, up=True)
        delta_u = to_units(delta, DELTA_UNITS, up=True)
        where, args = "dataset = ?", list[object]([dataset])
        if window_start is not None:
            where += " AND created_at >= ?"
            args.append(window_start)
        if window_end is not None:
            where += " AND created_at < ?"
            args.append(window_end)
        conn = self._open()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute(
                    "SELECT 1 FROM cap_charges WHERE request_id = ?", (request_id,)
                ).fetchone():
                    conn.execute("ROLLBACK")
                    return "duplicate"
                spent_e, spent_d = conn.execute(
                    "SELECT coalesce(sum(epsilon_units), 0), coalesce(sum(delta_units), 0)"
                    f" FROM cap_charges WHERE {where}",
                    args,
                ).fetchone()
                if spent_e + eps_u > to_units(cap_epsilon, EPSILON_UNITS, up=False) or (
                    spent_d + delta_u > to_units(cap_delta, DELTA_UNITS, up=False)
                ):
                    conn.execute("ROLLBACK")
                    return "exceeded"
                conn.execute(
                    "INSERT INTO cap_charges VALUES (?, ?, ?, ?, ?)",
                    (request_id, dataset, eps_u, delta_u, now),
                )
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return "charged"
        finally:
            conn.close()

    def spent(self, dataset: str, window_start: float | None, window_end: float | None) -> float:
        """Epsilon charged on `dataset` in the window (for the data owner's inspection)."""
        conn = self._open()
        try:
            q = "SELECT coalesce(sum(epsilon_units), 0) FROM cap_charges WHERE dataset = ?"
            args: list[object] = [dataset]
            if window_start is not None:
                q, args = q + " AND created_at >= ?", [*args, window_start]
            if window_end is not None:
                q, args = q + " AND created_at < ?", [*args, window_end]
            (units,) = conn.execute(q, args).fetchone()
        finally:
            conn.close()
        return from_units(int(units), EPSILON_UNITS)
