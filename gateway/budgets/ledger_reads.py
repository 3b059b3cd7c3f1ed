"""The ledger's reads: totals, histories, window sums, reports and the integrity checks (`Ledger` inherits them)."""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import cast

from gateway.budgets.ledger_schema import _CAP_COLUMNS, _SCOPES, _UNIT_COLUMNS
from gateway.budgets.records import (
    _OWNER_LEVELS,
    BudgetLimit,
    ChargeRecord,
    ChargeStatus,
    GrantKey,
    PrivacyLoss,
    StaleCharge,
    _agrees,
    _stale,
    _units,
)
from gateway.budgets.windows import _bucketed_sums, _scope, _window_sums
from gateway.errors import (
    GatewayInternalError,
)
from gateway.policy.periods import EPSILON_UNITS, RHO_UNITS, to_units
from sandbox.pricing.cap_rules import CapSums
from sandbox.pricing.periods import BUCKET_SQL


class LedgerReads:
    """Read-only queries on the ledger's tables; `Ledger` supplies `_connection`."""

    _connection: Callable[[], AbstractContextManager[sqlite3.Connection]]

    def stale_reservations(self, now: float, lease_s: float) -> list[StaleCharge]:
        """Reserved charges whose holder holds no live lease (it died, or crashed before completing them)."""
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT consumer, request_id, dataset, purpose, epsilon, delta, rho_units, product, created_at"
                " FROM charges c WHERE status = 'reserved' AND created_at < ? AND NOT EXISTS ("
                "  SELECT 1 FROM holders h WHERE h.holder = c.holder AND h.heartbeat >= ?)",
                (now - 1.0, now - lease_s)).fetchall()
        return [_stale(r, "reserved") for r in rows]

    def unaudited_charges(self) -> list[StaleCharge]:
        """Settled charges (released or failed) whose audit entry is missing (the audit tables share this
        database: an entry that records a charge has its consumer, request id and ``charge = 'charged'``)."""
        with self._connection() as conn:
            if not conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'entries'").fetchone():
                return []
            rows = conn.execute(
                "SELECT consumer, request_id, dataset, purpose, epsilon, delta, rho_units, product, created_at,"
                " status FROM charges c WHERE status IN ('released', 'failed') AND NOT EXISTS ("
                "  SELECT 1 FROM entries e WHERE e.consumer = c.consumer AND e.request_id = c.request_id"
                "  AND e.charge = 'charged')").fetchall()
        return [_stale(r[:9], str(r[9])) for r in rows]

    def spent(self, key: GrantKey) -> PrivacyLoss:
        """Returns the total privacy loss charged on a grant (zero if nothing was charged).

        Args:
            key: The grant.

        Returns:
            The running total, including reserved and failed charges.
        """
        with self._connection() as conn:
            return self._read_spent(conn, key)

    def history(self, key: GrantKey) -> list[ChargeRecord]:
        """Lists the charges on a grant, oldest first (refunded charges are gone).

        Args:
            key: The grant.

        Returns:
            One record per charge.
        """
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT request_id, epsilon, delta, status, created_at FROM charges"
                " WHERE consumer = ? AND dataset = ? AND purpose = ?"
                " ORDER BY created_at, rowid",
                (key.consumer, key.dataset, key.purpose),
            ).fetchall()
        return [
            ChargeRecord(
                request_id=request_id,
                cost=PrivacyLoss(epsilon, delta),
                status=cast(ChargeStatus, status),
                created_at=created_at,
            )
            for request_id, epsilon, delta, status, created_at in rows
        ]

    def verify(self) -> None:
        """Checks every running total against the sum of its charges.

        Raises:
            GatewayInternalError: A total differs from its charges by more than 1e-9 relative,
                or charges exist on a grant without a total.
        """
        with self._connection() as conn:
            conn.execute("BEGIN")  # one consistent snapshot for both tables
            try:
                totals = {
                    (c, d, p): (e, dl)
                    for c, d, p, e, dl in conn.execute(
                        "SELECT consumer, dataset, purpose, epsilon, delta FROM spend"
                    )
                }
                sums: dict[tuple[str, str, str], tuple[list[float], list[float]]] = {}
                for c, d, p, e, dl in conn.execute(
                    "SELECT consumer, dataset, purpose, epsilon, delta FROM charges"
                ):
                    eps_list, delta_list = sums.setdefault((c, d, p), ([], []))
                    eps_list.append(e)
                    delta_list.append(dl)
            finally:
                conn.execute("COMMIT")
        for grant in totals.keys() | sums.keys():
            total_eps, total_delta = totals.get(grant, (0.0, 0.0))
            eps_list, delta_list = sums.get(grant, ([], []))
            if not (
                _agrees(total_eps, math.fsum(eps_list))
                and _agrees(total_delta, math.fsum(delta_list))
            ):
                raise GatewayInternalError("privacy ledger totals disagree with their charges")

    def window_spent(self, limit: BudgetLimit, key: GrantKey, organization: str) -> tuple[int, int, int]:
        """Exact (epsilon units, delta units, rho units) charged in ``limit``'s window at its level."""
        with self._connection() as conn:
            return self._window_units(conn, limit, key, organization)

    def oldest_in_window(self, limit: BudgetLimit, key: GrantKey, organization: str) -> float | None:
        """The time of the oldest charge counting against ``limit`` (rolling periods refresh from it)."""
        where, args = _scope(limit, key, organization)
        with self._connection() as conn:
            (oldest,) = conn.execute(f"SELECT min(created_at) FROM charges WHERE {where}", args).fetchone()
        return None if oldest is None else float(oldest)

    def charges_between(self, start: float | None, end: float | None) -> list[dict[str, object]]:
        """Every charge (reserved, released or failed; refunds are gone) made in [start, end), as dicts."""
        where, args = "1 = 1", list[object]()
        if start is not None:
            where, args = where + " AND created_at >= ?", [*args, start]
        if end is not None:
            where, args = where + " AND created_at < ?", [*args, end]
        with self._connection() as conn:
            cur = conn.execute(
                "SELECT consumer, request_id, dataset, purpose, status, created_at, organization,"
                " epsilon, delta, epsilon_units, delta_units, use_class, data_owner, request_units,"
                f" price_per_request_unit, price_per_epsilon, currency FROM charges WHERE {where}"
                " ORDER BY created_at, rowid",
                args,
            )
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def use_by_month(self, datasets: Sequence[str]) -> list[tuple[str, str, str, str, int, float, float, int]]:
        """Settled charges (released or failed) on `datasets` as (dataset, month 'YYYY-MM' UTC, purpose, status,
        count, epsilon, delta, rho units), for the public transparency report (no consumer in it)."""
        if not datasets:
            return []
        marks = ", ".join("?" for _ in datasets)
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT dataset, strftime('%Y-%m', created_at, 'unixepoch'), purpose, status, count(*),"
                " total(epsilon), total(delta), total(rho_units) FROM charges"
                f" WHERE status IN ('released', 'failed') AND dataset IN ({marks})"
                " GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4", tuple(datasets)).fetchall()
        return [(str(d), str(m), str(p), str(st), int(n), float(e), float(dl), int(r))
                for d, m, p, st, n, e, dl, r in rows]

    def stored_response(self, consumer: str, request_id: str) -> bytes | None:
        """The answer stored for `consumer`'s released request `request_id` (None: no such release)."""
        with self._connection() as conn:
            row = conn.execute(
                "SELECT response FROM charges WHERE consumer = ? AND request_id = ? AND status = 'released'",
                (consumer, request_id)).fetchone()
        return bytes(row[0]) if row is not None and isinstance(row[0], bytes) else None

    def verify_units(self) -> None:
        """Checks that every charge's exact units cover its float cost (they never round down).

        Raises:
            GatewayInternalError: a charge's units are below its cost.
        """
        with self._connection() as conn:
            for eps, delta, eu, du in conn.execute(
                "SELECT epsilon, delta, epsilon_units, delta_units FROM charges"
            ):
                need_eps, need_delta = _units(PrivacyLoss(eps, delta))
                if eu < need_eps or du < need_delta:
                    raise GatewayInternalError("privacy ledger units disagree with their charges")

    @staticmethod
    def _window_units(
        conn: sqlite3.Connection, limit: BudgetLimit, key: GrantKey, organization: str
    ) -> tuple[int, int, int]:
        """Exact (epsilon, delta, rho) units charged in ``limit``'s window at its level, from the buckets,
        as the level counts them (`_level_cost` is the same rule for one charge):

        * a grant's epsilon level: epsilon, and delta with each zCDP charge's conversion delta (a charge made
          while the grant was zcdp is (epsilon at that delta, the grant's delta)-DP);
        * a grant's rho level: zCDP charges' rho, plus earlier pure charges (made before the operator
          switched the grant to zcdp) as epsilon^2 / 2 (OpenDP's make_pureDP_to_zCDP, BS16 Prop. 1.4); an
          approximate-DP charge (epsilon, delta > 0) has no such conversion in OpenDP, so while one is in the
          window the level counts as spent;
        * the data owner's levels: the charges' counts on the owner's cap in its measure (`cap_*`, from
          `sandbox.pricing.cap_rules`); a charge with no count in that measure marks the window as spent.
        """
        if limit.level == "member_product":  # few charges (models): summed directly over the index
            where = "consumer = ? AND dataset = ? AND purpose = ? AND product = ?"
            args: list[object] = [key.consumer, key.dataset, key.purpose, limit.product]
            if limit.window.start is not None:
                where, args = where + " AND created_at >= ?", [*args, limit.window.start]
            if limit.window.end is not None:
                where, args = where + " AND created_at < ?", [*args, limit.window.end]
            e, d = conn.execute(f"SELECT coalesce(sum(epsilon_units), 0), coalesce(sum(delta_units), 0)"
                                f" FROM charges WHERE {where}", args).fetchone()
            return int(e), int(d), 0
        sums = _window_sums(conn, limit, key, organization)
        if limit.level in _OWNER_LEVELS:
            eps, delta, rho = sums["cap_epsilon_units"], sums["cap_delta_units"], sums["cap_rho_units"]
            if limit.measure == "rho":
                delta = sums["cap_rho_delta_units"]
                if sums["cap_no_rho"]:
                    rho = max(rho, to_units(limit.budget.rho, RHO_UNITS, up=False))
            elif sums["cap_no_epsilon"]:
                eps = max(eps, to_units(limit.budget.epsilon, EPSILON_UNITS, up=False))
            return eps, delta, rho
        eps, delta = sums["epsilon_units"], sums["delta_units"]
        if limit.measure != "rho":
            return eps, delta + sums["conversion_delta_units"], sums["rho_units"]
        zcdp_u = sums["zcdp_units"]
        if sums["no_zcdp"]:
            zcdp_u = max(zcdp_u, to_units(limit.budget.rho, RHO_UNITS, up=False))
        return eps, delta, zcdp_u

    def owner_sums(self, dataset: str, start: float | None, end: float | None) -> CapSums:
        """What the charges on `dataset` in [start, end) count on the data owner's cap, in both definitions
        (the same sums the sandbox's cap ledger keeps; `sandbox.pricing.cap_rules.CapSums`)."""
        with self._connection() as conn:
            (scope,) = conn.execute("SELECT json_array('d', ?)", (dataset,)).fetchone()
            sums = _bucketed_sums(conn, scope, "dataset = ?", [dataset], start, end, _CAP_COLUMNS)
        return CapSums(*sums)

    def organization_units(self, organization: str, start: float | None, end: float | None) -> int:
        """Exact epsilon units an organisation was charged on all its grants in [start, end) (buckets)."""
        with self._connection() as conn:
            (scope,) = conn.execute("SELECT json_array('O', ?)", (organization,)).fetchone()
            return _bucketed_sums(conn, scope, "organization = ?", [organization], start, end,
                                  ("epsilon_units",))[0]

    def verify_buckets(self) -> None:
        """Checks every spending bucket against the charges it sums (recomputed from the charges table).

        Raises:
            GatewayInternalError: a bucket differs from its charges.
        """
        cols = ", ".join(f"sum({c})" for c in _UNIT_COLUMNS)
        with self._connection() as conn:
            conn.execute("BEGIN")  # one snapshot of both tables
            try:
                stored = {
                    (scope, width, bucket): tuple(vals)
                    for scope, width, bucket, *vals in conn.execute(
                        f"SELECT scope, width, bucket, {', '.join(_UNIT_COLUMNS)}, charges FROM spend_buckets"
                        " WHERE charges != 0")
                }
                expected = {}
                for scope in _SCOPES.values():
                    for width, bucket in BUCKET_SQL.items():
                        sc, b = scope.format(p=""), bucket.format(p="")
                        for row in conn.execute(
                            f"SELECT {sc}, {width}, {b}, {cols}, count(*) FROM charges GROUP BY 1, 2, 3"
                        ):
                            expected[(row[0], row[1], row[2])] = tuple(row[3:])
            finally:
                conn.execute("COMMIT")
        if stored != expected:
            raise GatewayInternalError("privacy ledger spending buckets disagree with their charges")

    @staticmethod
    def _read_spent(conn: sqlite3.Connection, key: GrantKey) -> PrivacyLoss:
        row = conn.execute(
            "SELECT epsilon, delta FROM spend WHERE consumer = ? AND dataset = ? AND purpose = ?",
            (key.consumer, key.dataset, key.purpose),
        ).fetchone()
        if row is None:
            return PrivacyLoss(0.0, 0.0)
        return PrivacyLoss(row[0], row[1])
