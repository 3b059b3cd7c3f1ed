"""The data owner's caps as the catalog states them: per dataset, in the owner's privacy definition.

Pure (no I/O, no data): parsed by the sandbox from its catalog (`sandbox.catalog`), published in the public
catalog (`sandbox.protocol.catalog.DatasetInfo.caps`; both types are records of the declared wire schema)
so the gateway mirrors exactly what the sandbox enforces, and read by the gateway for its own courtesy check.
What a release counts on a cap is in `sandbox.pricing.cap_rules`.

A dataset's cap (`[datasets.<d>.caps]`), every number written down (nothing has a default):

    epsilon_per_period = 10.0    # EITHER an (epsilon, delta) cap: basic composition of approximate DP
    rho_per_period = 0.5         # OR a rho cap: zCDP (approximate zCDP with the delta below)
    delta_per_period = 1e-5      # the delta budget of the period (approximate-DP releases, partition
                                 # selection, and on an epsilon cap each zCDP release's conversion_delta)
    period = "month"             # day | week | month (UTC), rolling (+ window_days), lifetime
    conversion_delta = 1e-7      # optional: the OWNER's delta at which a zCDP release (rho) is counted
                                 # as epsilon on an epsilon cap; charged as delta with each such release
    lifetime_epsilon = 100.0     # optional, with lifetime_delta: a second cap over all time, in the same
    lifetime_delta = 1e-4        # definition (lifetime_rho on a rho cap), enforced in the same transaction

The per-subject verification cap (`[datasets.<d>.verification_caps]`, and a template's own
`max_checks_per_subject_per_period`): how many checks about one subject ALL consumers together may run per
period (day or hour, UTC) with each template; a template's value overrides the dataset's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from sandbox.errors import ConfigError
from sandbox.pricing.periods import (
    DELTA_UNITS,
    EPSILON_UNITS,
    RHO_UNITS,
    Period,
    Window,
    parse_period,
    to_units,
)
from sandbox.protocol.base import Strict

__all__ = [
    "SUBJECT_PERIODS",
    "CapMeasure",
    "OwnerCap",
    "SubjectCap",
    "parse_owner_cap",
    "parse_subject_caps",
]

CapMeasure = Literal["epsilon", "rho"]
SUBJECT_PERIODS = ("day", "hour")
MAX_SUBJECT_CHECKS = 1_000_000


class OwnerCap(Strict, frozen=True):
    """The data owner's cap on one dataset, in the owner's privacy definition.

    Attributes:
        measure: 'epsilon' (an (epsilon, delta) cap) or 'rho' (a zCDP cap with a delta budget).
        amount: epsilon_per_period or rho_per_period.
        delta: delta_per_period.
        period: How the periodic cap refreshes.
        conversion_delta: The owner's delta at which a zCDP release is counted as epsilon (None: not set).
        lifetime_amount: The lifetime cap in the same measure (None: no lifetime cap).
        lifetime_delta: The lifetime cap's delta (set exactly when `lifetime_amount` is).
    """

    measure: CapMeasure
    amount: float
    delta: float
    period: Period
    conversion_delta: float | None = None
    lifetime_amount: float | None = None
    lifetime_delta: float | None = None

    @property
    def units(self) -> int:
        """The amount per period in exact units, rounded down (nano-epsilon or nano-rho)."""
        return to_units(self.amount, EPSILON_UNITS if self.measure == "epsilon" else RHO_UNITS, up=False)

    @property
    def delta_units(self) -> int:
        """delta_per_period in atto-delta, rounded down."""
        return to_units(self.delta, DELTA_UNITS, up=False)

    @property
    def lifetime_units(self) -> tuple[int, int] | None:
        """The lifetime cap (amount, delta) in exact units rounded down, or None."""
        if self.lifetime_amount is None or self.lifetime_delta is None:
            return None
        per = EPSILON_UNITS if self.measure == "epsilon" else RHO_UNITS
        return to_units(self.lifetime_amount, per, up=False), to_units(self.lifetime_delta, DELTA_UNITS, up=False)

    def window(self, now: float) -> Window:
        """The charges that count against the periodic cap at `now`."""
        return self.period.window(now)

    def describe(self) -> str:
        """e.g. 'epsilon 10 delta 1e-05 per month (conversion_delta 1e-07); lifetime epsilon 100 delta 0.0001'."""
        text = f"{self.measure} {self.amount:g} delta {self.delta:g} per {self.period.describe()}"
        if self.conversion_delta is not None:
            text += f" (conversion_delta {self.conversion_delta:g})"
        if self.lifetime_amount is not None:
            text += f"; lifetime {self.measure} {self.lifetime_amount:g} delta {self.lifetime_delta:g}"
        return text


class SubjectCap(Strict, frozen=True):
    """At most `max_checks` checks about one subject with `template`, per `period` (UTC), all consumers."""

    template: str
    max_checks: int
    period: str  # 'day' or 'hour'

    def period_start(self, now: float) -> int:
        """The start (seconds since the epoch) of the period containing `now`."""
        t = datetime.fromtimestamp(now, UTC)
        t = t.replace(minute=0, second=0, microsecond=0)
        if self.period == "day":
            t = t.replace(hour=0)
        return int(t.timestamp())

    def period_end(self, now: float) -> int:
        """When the period containing `now` ends."""
        return self.period_start(now) + (86400 if self.period == "day" else 3600)


# -- parsing -------------------------------------------------------------------------------------------


def _number(file: str, key: str, v: Any, *, positive: bool = False, below_one: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        raise ConfigError(file, key, "must be a finite, non-negative number")
    if positive and v <= 0:
        raise ConfigError(file, key, "must be positive")
    if below_one and v >= 1:
        raise ConfigError(file, key, "must be below 1")
    return float(v)


_CAP_KEYS = {"epsilon_per_period", "rho_per_period", "delta_per_period", "period", "window_days",
             "conversion_delta", "lifetime_epsilon", "lifetime_rho", "lifetime_delta"}


def parse_owner_cap(file: str, key: str, c: Any) -> OwnerCap:
    """Read and validate `[datasets.<d>.caps]` (`key` is its dotted name, for messages).

    Raises:
        ConfigError: unknown or missing keys, mixed definitions (epsilon and rho), a number that is not
            finite or is negative, a delta outside [0, 1), a conversion_delta outside (0, 1) or above the
            delta it is charged against, a lifetime amount without lifetime_delta (or the reverse).
    """
    if not isinstance(c, dict):
        raise ConfigError(file, key, "must be a table")
    for k in sorted(set(c) - _CAP_KEYS):
        raise ConfigError(file, f"{key}.{k}", "unknown key")
    if "epsilon_per_period" in c and "rho_per_period" in c:
        raise ConfigError(file, f"{key}.rho_per_period",
                          "mixed definitions: set epsilon_per_period or rho_per_period, not both")
    if "epsilon_per_period" not in c and "rho_per_period" not in c:
        raise ConfigError(file, f"{key}.epsilon_per_period",
                          "missing: set epsilon_per_period (an (epsilon, delta) cap) or rho_per_period (zCDP)")
    measure: CapMeasure = "epsilon" if "epsilon_per_period" in c else "rho"
    other: CapMeasure = "rho" if measure == "epsilon" else "epsilon"
    if f"lifetime_{other}" in c:
        raise ConfigError(file, f"{key}.lifetime_{other}",
                          f"mixed definitions: the cap is in {measure}; use lifetime_{measure}")
    if "delta_per_period" not in c:
        raise ConfigError(file, f"{key}.delta_per_period", "missing (required, no default; 0 allows no delta)")
    amount = _number(file, f"{key}.{measure}_per_period", c[f"{measure}_per_period"], positive=True)
    delta = _number(file, f"{key}.delta_per_period", c["delta_per_period"], below_one=True)
    period = parse_period(file, f"{key}.", c)
    conversion = None
    if "conversion_delta" in c:
        conversion = _number(file, f"{key}.conversion_delta", c["conversion_delta"])
        if not 0 < conversion < 1:
            raise ConfigError(file, f"{key}.conversion_delta", "must be in (0, 1)")
    lifetime_amount = lifetime_delta = None
    if f"lifetime_{measure}" in c or "lifetime_delta" in c:
        if f"lifetime_{measure}" not in c:
            raise ConfigError(file, f"{key}.lifetime_{measure}", "missing: lifetime_delta needs it")
        if "lifetime_delta" not in c:
            raise ConfigError(file, f"{key}.lifetime_delta", f"missing: lifetime_{measure} needs it")
        if period.kind == "lifetime":
            raise ConfigError(file, f"{key}.lifetime_{measure}", "the periodic cap is already a lifetime cap")
        lifetime_amount = _number(file, f"{key}.lifetime_{measure}", c[f"lifetime_{measure}"], positive=True)
        lifetime_delta = _number(file, f"{key}.lifetime_delta", c["lifetime_delta"], below_one=True)
    if measure == "epsilon" and conversion is not None:
        for name, budget in (("delta_per_period", delta), ("lifetime_delta", lifetime_delta)):
            if budget is not None and conversion > budget:
                raise ConfigError(file, f"{key}.conversion_delta",
                                  f"exceeds {name} ({budget!r}): each zCDP release is charged this delta, "
                                  "so none could ever fit")
    return OwnerCap(measure, amount, delta, period, conversion, lifetime_amount, lifetime_delta)


def parse_subject_caps(
    file: str, key: str, dataset: Mapping[str, Any], templates: Mapping[str, Any]
) -> tuple[SubjectCap, ...]:
    """The per-subject verification caps of one dataset: `[<key>.verification_caps]` (period, optional default
    `max_checks_per_subject_per_period`) and each template's own `max_checks_per_subject_per_period`.

    Raises:
        ConfigError: unknown keys, a period other than day/hour, a count that is not an integer in
            [1, 1000000], or a template override without the dataset's period.
    """
    raw = dataset.get("verification_caps")
    period = default = None
    if raw is not None:
        if not isinstance(raw, dict):
            raise ConfigError(file, f"{key}.verification_caps", "must be a table")
        for k in sorted(set(raw) - {"period", "max_checks_per_subject_per_period"}):
            raise ConfigError(file, f"{key}.verification_caps.{k}", "unknown key")
        period = raw.get("period")
        if period not in SUBJECT_PERIODS:
            raise ConfigError(file, f"{key}.verification_caps.period", "must be 'day' or 'hour' (UTC)")
        if "max_checks_per_subject_per_period" in raw:
            default = _count(file, f"{key}.verification_caps.max_checks_per_subject_per_period",
                             raw["max_checks_per_subject_per_period"])
    out = []
    for name, t in templates.items():
        own = t.get("max_checks_per_subject_per_period") if isinstance(t, dict) else None
        tkey = f"{key}.verifications.{name}.max_checks_per_subject_per_period"
        if own is not None:
            if period is None:
                raise ConfigError(file, tkey, f"needs [{key}.verification_caps] period = 'day' or 'hour'")
            out.append(SubjectCap(str(name), _count(file, tkey, own), str(period)))
        elif default is not None:
            out.append(SubjectCap(str(name), default, str(period)))
    return tuple(out)


def _count(file: str, key: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_SUBJECT_CHECKS:
        raise ConfigError(file, key, f"must be an integer in [1, {MAX_SUBJECT_CHECKS}]")
    return int(v)
