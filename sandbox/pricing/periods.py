"""Budget periods (calendar windows in UTC, rolling windows, lifetime) and exact budget units.

Shared by the gateway's ledger and the sandbox's own cap ledger (pure: no I/O, no data).

Exact units. Budgets and charges are summed as integers: epsilon in nano-epsilon (1e-9) and delta
in atto-delta (1e-18). A float is converted through its shortest decimal representation
(`repr`), so `0.1` is exactly 100_000_000 nano-epsilon and ten charges of 0.1 use exactly a
budget of 1.0, never more or less. Charges round *up* to the next unit and budgets round *down*,
so rounding can only make the accounting stricter (by at most 1e-9 epsilon per charge). SQLite
sums INTEGER columns exactly (it raises on int64 overflow instead of drifting), so a period's total
is one indexed `SUM` in the same transaction as the check; `fractions.Fraction` text would be just
as exact but cannot be summed inside SQLite.
"""

from __future__ import annotations

import calendar
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any, Literal

from sandbox.errors import ConfigError
from sandbox.protocol.base import Strict

__all__ = [
    "BUCKET_SQL",
    "DELTA_UNITS",
    "EPSILON_UNITS",
    "MINUTE_SQL",
    "RHO_UNITS",
    "Period",
    "Window",
    "WindowPieces",
    "from_units",
    "parse_period",
    "rfc3339",
    "to_units",
    "window_pieces",
    "window_queries",
]

EPSILON_UNITS = 10**9  # nano-epsilon
DELTA_UNITS = 10**18  # atto-delta
RHO_UNITS = 10**9  # nano-rho (zCDP grants)
CALENDAR_UNITS = ("day", "week", "month")
MAX_WINDOW_DAYS = 3660

PeriodKind = Literal["calendar", "rolling", "lifetime"]


def to_units(value: float, per: int, *, up: bool) -> int:
    """Exact integer units of a float via its shortest decimal form; `up` for charges, down for budgets."""
    d = Decimal(repr(float(value))) * per
    return int(d.to_integral_value(rounding=ROUND_CEILING if up else ROUND_FLOOR))


def from_units(units: int, per: int) -> float:
    """Units back to a float (for display only; never for admission)."""
    return float(Decimal(units) / per)


def rfc3339(ts: float | None) -> str:
    """An RFC 3339 UTC timestamp with second precision (`2026-03-01T00:00:00Z`), or '' for None."""
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Window:
    """The charges that count now: `start <= created_at < end` (None: unbounded on that side).

    Attributes:
        start: Start of the window (period start), seconds since the epoch; None for lifetime.
        end: End of a calendar period (when the budget refreshes); None for rolling and lifetime.
    """

    start: float | None
    end: float | None


class Period(Strict, frozen=True):  # a record of the wire schema (sandbox.protocol.base)
    """How a budget refreshes.

    Attributes:
        kind: 'calendar' (UTC day/week/month, refreshes at the next boundary), 'rolling' (the last
            `window_days` days; budget returns as old charges age out) or 'lifetime' (never refreshes).
        unit: For calendar periods: 'day', 'week' (ISO, Monday 00:00 UTC) or 'month'.
        window_days: For rolling periods: the window length in days.
    """

    kind: PeriodKind
    unit: str = ""
    window_days: int = 0

    def window(self, now: float) -> Window:
        """The window of charges that counts against a budget at time `now`."""
        if self.kind == "lifetime":
            return Window(None, None)
        if self.kind == "rolling":
            # A charge counts while now < created_at + window: exclusive start, as the next float up.
            return Window(math.nextafter(now - self.window_days * 86400.0, math.inf), None)
        t = datetime.fromtimestamp(now, UTC)
        day = t.replace(hour=0, minute=0, second=0, microsecond=0)
        if self.unit == "day":
            start, end = day, day + timedelta(days=1)
        elif self.unit == "week":
            start = day - timedelta(days=day.weekday())
            end = start + timedelta(days=7)
        else:
            start = day.replace(day=1)
            days = calendar.monthrange(start.year, start.month)[1]
            end = start + timedelta(days=days)
        return Window(start.timestamp(), end.timestamp())

    def describe(self) -> str:
        """'month', 'week', 'day', 'rolling 30d' or 'lifetime'."""
        if self.kind == "calendar":
            return self.unit
        if self.kind == "rolling":
            return f"rolling {self.window_days}d"
        return "lifetime"


LIFETIME = Period("lifetime")


def parse_period(file: str, prefix: str, table: dict[str, Any]) -> Period:
    """Read `period` (and `window_days` for rolling) from a policy or catalog table.

    `period = "month" | "week" | "day"` (calendar, UTC), `period = "rolling"` with `window_days = N`,
    or `period = "lifetime"`. There is no default.

    Raises:
        ConfigError: missing or invalid, naming `prefix + key`.
    """
    if "period" not in table:
        raise ConfigError(file, f"{prefix}period", "is required (month, week, day, rolling or lifetime)")
    p = table["period"]
    if p in CALENDAR_UNITS:
        if "window_days" in table:
            raise ConfigError(file, f"{prefix}window_days", "only applies to period = 'rolling'")
        return Period("calendar", str(p))
    if p == "lifetime":
        if "window_days" in table:
            raise ConfigError(file, f"{prefix}window_days", "only applies to period = 'rolling'")
        return LIFETIME
    if p == "rolling":
        w = table.get("window_days")
        if w is None:
            raise ConfigError(file, f"{prefix}window_days", "is required for period = 'rolling'")
        if isinstance(w, bool) or not isinstance(w, int) or not 1 <= w <= MAX_WINDOW_DAYS:
            raise ConfigError(file, f"{prefix}window_days", f"must be an integer in [1, {MAX_WINDOW_DAYS}]")
        return Period("rolling", window_days=w)
    raise ConfigError(
        file, f"{prefix}period", f"must be one of month, week, day, rolling, lifetime; got {p!r}"
    )


# -- windows as sums of time buckets (the gateway's ledger and the sandbox's cap ledger) ----------------

MINUTE_SQL = "CAST(created_at / 60 AS INTEGER)"  # a charge's minute; its hour is minute / 60 (integer)
BUCKET_SQL = {0: "0", 60: "CAST({p}created_at / 60 AS INTEGER)",
              3600: "(CAST({p}created_at / 60 AS INTEGER) / 60)"}  # width (s; 0 = lifetime) -> bucket index
_FAR_FUTURE = float(2**40)


@dataclass(frozen=True, slots=True)
class WindowPieces:
    """A window [start, end) cut for bucketed sums (see `window_pieces`).

    Attributes:
        lifetime: The window has no bounds: read the lifetime bucket (width 0, bucket 0) only.
        edges: (lo, hi, minute): the charges with lo <= created_at < hi in that minute (read from the
            charges: the window's partial minutes, at most two).
        buckets: (width, first, stop): the bucket rows of that width with first <= bucket < stop.
    """

    lifetime: bool
    edges: tuple[tuple[float, float, int], ...]
    buckets: tuple[tuple[int, int, int], ...]


def window_pieces(start: float | None, end: float | None) -> WindowPieces:
    """Cut [start, end) into its two partial minutes, its whole minutes and its whole hours.

    Every charge in the window lands in exactly one piece: float division is monotonic, so a charge at
    or after `start` has a minute index at or after start's, and the edge reads widen their time range
    by a second and cut by the minute index the buckets use (`MINUTE_SQL`). A window inside one minute is
    one edge. Callers sum the pieces with their own scope condition.
    """
    if start is None and end is None:
        return WindowPieces(True, (), ())
    lo = 0.0 if start is None else float(start)
    hi = _FAR_FUTURE if end is None else float(end)
    if not hi > lo:
        return WindowPieces(False, (), ())
    m_lo, m_hi = math.floor(lo / 60), math.floor(hi / 60)
    if m_lo == m_hi:
        return WindowPieces(False, ((lo, hi, m_lo),), ())
    edges = ((lo, min(hi, (m_lo + 1) * 60.0 + 1.0), m_lo), (max(lo, m_hi * 60.0 - 1.0), hi, m_hi))
    first, stop = m_lo + 1, m_hi  # whole minutes
    h_first, h_stop = -(-first // 60), stop // 60  # hours whose 60 minutes are all whole minutes here
    ranges: tuple[tuple[int, int, int], ...] = ((60, first, stop),)
    if h_first < h_stop:
        ranges = ((3600, h_first, h_stop), (60, first, h_first * 60), (60, h_stop * 60, stop))
    return WindowPieces(False, edges, tuple(r for r in ranges if r[1] < r[2]))


def window_queries(
    start: float | None, end: float | None, columns: tuple[str, ...], *,
    buckets: str, bucket_where: str, bucket_args: tuple[object, ...],
    charges: str, charge_where: str, charge_args: tuple[object, ...],
) -> list[tuple[str, tuple[object, ...]]]:
    """The reads that sum `columns` over [start, end) (`window_pieces`): bucket rows of table `buckets`
    selected by `bucket_where` (one scope), and the partial minutes from table `charges` selected by
    `charge_where` (the same charges). The caller runs them in one transaction and adds the rows up;
    building them is pure, so the gateway's ledger and the sandbox's cap ledger share it."""
    sums = ", ".join(f"coalesce(sum({c}), 0)" for c in columns)
    pieces = window_pieces(start, end)
    reads: list[tuple[str, tuple[object, ...]]] = []
    if pieces.lifetime:
        reads.append((f"SELECT {sums} FROM {buckets} WHERE {bucket_where} AND width = 0 AND bucket = 0",
                      bucket_args))
    for lo, hi, minute in pieces.edges:
        reads.append((f"SELECT {sums} FROM {charges} WHERE {charge_where} AND created_at >= ?"
                      f" AND created_at < ? AND {MINUTE_SQL} = ?", (*charge_args, lo, hi, minute)))
    for width, first, stop in pieces.buckets:
        reads.append((f"SELECT {sums} FROM {buckets} WHERE {bucket_where} AND width = ? AND bucket >= ?"
                      " AND bucket < ?", (*bucket_args, width, first, stop)))
    return reads
