"""Budget windows over the ledger: a level's scope, its bucketed sums, and what one charge adds to it."""

from __future__ import annotations

import sqlite3

from gateway.budgets.ledger_schema import _CAP_COLUMNS, _FLAG_COLUMNS, _GRANT_COLUMNS, _SCOPE_COLUMNS
from gateway.budgets.records import _OWNER_LEVELS, BudgetLimit, GrantKey
from gateway.policy.periods import Window
from sandbox.pricing.cap_rules import CapCounts
from sandbox.pricing.periods import window_queries


def _scope(limit: BudgetLimit, key: GrantKey, organization: str) -> tuple[str, list[object]]:
    args: list[object]
    if limit.level == "member":
        where, args = "consumer = ? AND dataset = ? AND purpose = ?", [key.consumer, key.dataset, key.purpose]
    elif limit.level == "organization":
        where, args = "organization = ? AND dataset = ? AND purpose = ?", [organization, key.dataset, key.purpose]
    else:
        where, args = "dataset = ?", [key.dataset]
    if limit.window.start is not None:
        where, args = where + " AND created_at >= ?", [*args, limit.window.start]
    if limit.window.end is not None:
        where, args = where + " AND created_at < ?", [*args, limit.window.end]
    return where, args


def _window_sums(
    conn: sqlite3.Connection, limit: BudgetLimit, key: GrantKey, organization: str
) -> dict[str, int]:
    """The columns a level reads (`_GRANT_COLUMNS`, or `_CAP_COLUMNS` for the data owner's levels), summed
    over ``limit``'s scope and window; flags as 0 or 1."""
    level = limit.level if limit.level in _SCOPE_COLUMNS else "dataset_cap"
    summed: tuple[str, ...] = _CAP_COLUMNS if limit.level in _OWNER_LEVELS else _GRANT_COLUMNS
    tag, columns = _SCOPE_COLUMNS[level]
    values = {"consumer": key.consumer, "organization": organization, "dataset": key.dataset,
              "purpose": key.purpose}
    # the same json_array the triggers compute, so the key matches byte for byte
    (scope,) = conn.execute(f"SELECT json_array('{tag}', {', '.join('?' for _ in columns)})",
                            [values[c] for c in columns]).fetchone()
    where, args = _scope(BudgetLimit(limit.level, limit.budget, Window(None, None), limit.measure),
                         key, organization)
    sums = _bucketed_sums(conn, scope, where, args, limit.window.start, limit.window.end, summed)
    return {c: min(v, 1) if c in _FLAG_COLUMNS else v for c, v in zip(summed, sums, strict=True)}


def _level_cost(limit: BudgetLimit, eps: int, delta: int, rho: int, conversion: int, owner: CapCounts
                ) -> tuple[int, int, int, bool]:
    """(epsilon, delta, rho units, has no count) one charge adds at ``limit``'s level (`Ledger._window_units`
    reads the same for the charges in its window)."""
    if limit.level in _OWNER_LEVELS:
        if limit.measure == "rho":
            return owner.epsilon_units, owner.rho_delta_units, owner.rho_units, owner.no_rho
        return owner.epsilon_units, owner.delta_units, owner.rho_units, owner.no_epsilon
    if limit.measure == "rho":
        return eps, delta, rho, False
    return eps, delta + conversion, rho, False


def _bucketed_sums(
    conn: sqlite3.Connection, scope: str, where: str, args: list[object], start: float | None,
    end: float | None, columns: tuple[str, ...],
) -> list[int]:
    """Sums of `columns` over the charges of one bucket scope (`where` selects the same charges) in
    [start, end) (`sandbox.pricing.periods.window_queries`)."""
    totals = [0] * len(columns)
    for sql, params in window_queries(start, end, columns, buckets="spend_buckets", bucket_where="scope = ?",
                                      bucket_args=(scope,), charges="charges", charge_where=where,
                                      charge_args=tuple(args)):
        for i, v in enumerate(conn.execute(sql, params).fetchone()):
            totals[i] += int(v)
    return totals
