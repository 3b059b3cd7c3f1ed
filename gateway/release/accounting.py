"""The audit log accounts for every charge: reconcile its entries with the ledger's charges.

Every settled charge (released or failed) in the ledger must have exactly one audit entry that records it
(``charge = 'charged'``, same consumer and request id, same epsilon, delta and rho), and every such entry
must have its charge; so the audit log's totals per grant and period equal the ledger's. Both live in the
same database (``<state_dir>/ledger.sqlite3``), and the gateway writes an entry in the transaction that
settles its charge, so a difference means tampering, a bug, or charges made before the audit log moved
into the ledger's database and not yet audited by the settler (`gateway.path.settle`). `pgw audit verify`
runs this check next to the chain, MAC and seal checks.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from gateway.policy.periods import RHO_UNITS, to_units
from gateway.storage.pg import PgDatabase
from gateway.storage.sqlite import open_location

__all__ = ["GrantTotals", "Reconciliation", "reconcile"]


@dataclass
class GrantTotals:
    """One grant's charges in one calendar month (UTC), as the ledger and as the audit log count them."""

    consumer: str
    dataset: str
    purpose: str
    month: str
    ledger_epsilon: float = 0.0
    ledger_delta: float = 0.0
    ledger_rho: float = 0.0
    audit_epsilon: float = 0.0
    audit_delta: float = 0.0
    audit_rho: float = 0.0
    charges: int = 0

    @property
    def equal(self) -> bool:
        """True when the audit log's totals equal the ledger's (sums of the same float values, in one order)."""
        return (self.ledger_epsilon, self.ledger_delta, self.ledger_rho) == (
            self.audit_epsilon, self.audit_delta, self.audit_rho)


@dataclass
class Reconciliation:
    """The result of `reconcile`: per grant and month totals, and each charge or entry that does not match."""

    grants: list[GrantTotals] = field(default_factory=list)
    unaudited: list[str] = field(default_factory=list)  # "consumer/request_id" of charges with no entry
    unmatched: list[str] = field(default_factory=list)  # entries recording a charge the ledger does not hold
    different: list[str] = field(default_factory=list)  # charges whose entry records another cost
    duplicated: list[str] = field(default_factory=list)  # charges recorded by more than one entry
    in_flight: int = 0  # reserved charges (their requests are running, or wait for the settler)

    @property
    def ok(self) -> bool:
        """True when every charge is recorded exactly once with its cost."""
        return not (self.unaudited or self.unmatched or self.different or self.duplicated) and all(
            g.equal for g in self.grants)

    def to_json_obj(self) -> dict[str, object]:
        """For `--json`."""
        return {
            "ok": self.ok, "in_flight": self.in_flight, "unaudited": self.unaudited, "unmatched": self.unmatched,
            "different": self.different, "duplicated": self.duplicated,
            "grants": [{**g.__dict__, "equal": g.equal} for g in self.grants],
        }


def _month(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m")


def reconcile(database: Path | PgDatabase) -> Reconciliation:
    """Compare the ledger's settled charges with the audit entries that record charges, in one read snapshot.

    Raises:
        sqlite3.Error: the database cannot be read, or holds no ledger and audit tables.
    """
    out = Reconciliation()
    conn = (open_location(database, busy_timeout_s=30.0) if isinstance(database, PgDatabase)
            else sqlite3.connect(f"file:{database}?mode=ro", uri=True))
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"charges", "entries"} <= tables:  # an audit log without a ledger (an export's copy): nothing to do
            return out
        conn.execute("BEGIN")
        charges = conn.execute(
            "SELECT consumer, request_id, dataset, purpose, epsilon, delta, rho_units, created_at, status"
            " FROM charges ORDER BY created_at, rowid").fetchall()
        entries = conn.execute(
            "SELECT consumer, request_id, epsilon, delta, rho FROM entries WHERE charge = 'charged' ORDER BY seq"
        ).fetchall()
        conn.execute("COMMIT")
    finally:
        conn.close()
    recorded: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for consumer, request_id, eps, delta, rho in entries:
        recorded.setdefault((str(consumer), str(request_id)), []).append((float(eps), float(delta), float(rho)))
    grants: dict[tuple[str, str, str, str], GrantTotals] = {}
    settled: set[tuple[str, str]] = set()
    for consumer, request_id, dataset, purpose, eps, delta, rho_units, created, status in charges:
        if status == "reserved":
            out.in_flight += 1
            continue
        key = (str(consumer), str(request_id))
        settled.add(key)
        g = grants.setdefault((key[0], str(dataset), str(purpose), _month(float(created))),
                              GrantTotals(key[0], str(dataset), str(purpose), _month(float(created))))
        g.charges += 1
        rho = int(rho_units) / RHO_UNITS
        g.ledger_epsilon += float(eps)
        g.ledger_delta += float(delta)
        g.ledger_rho += rho
        names = f"{key[0]}/{key[1]}"
        found = recorded.get(key, [])
        if not found:
            out.unaudited.append(names)
            continue
        if len(found) > 1:
            out.duplicated.append(names)
        a_eps, a_delta, a_rho = found[0]
        a_rho_units = to_units(a_rho, RHO_UNITS, up=True)  # the ledger keeps rho in units, rounded up
        g.audit_epsilon += a_eps
        g.audit_delta += a_delta
        g.audit_rho += a_rho_units / RHO_UNITS
        if (a_eps, a_delta, a_rho_units) != (float(eps), float(delta), int(rho_units)):
            out.different.append(names)
    out.unmatched = [f"{c}/{r}" for (c, r) in recorded if (c, r) not in settled]
    out.grants = sorted(grants.values(), key=lambda g: (g.month, g.consumer, g.dataset, g.purpose))
    return out
