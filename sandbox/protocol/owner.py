"""Boundary messages for the data owner's settings: reload them without a restart, and read cap usage.

* `ReloadRequest`: the sandbox re-reads its catalog file and, when only the owner's reloadable settings
  changed (caps, grades, verification caps: `sandbox.catalog.RELOADABLE`), swaps them in atomically and
  answers the new public `CatalogInfo`; otherwise it answers `ErrorReply('rejected', reason)` and keeps running
  with the settings it had.
* `CapUsageRequest`: per dataset, the owner's cap and what the sandbox's own cap ledger counts on it this
  period and over the lifetime (`CapUsageReply`): the authoritative figures.

Neither carries data: caps are public settings and the sums are functions of the requests charged.
Messages are `ExtensionMessage`s of `sandbox.protocol.messages` (same frames, same strict decoding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

from sandbox.owner_caps import OwnerCap, cap_from_json, cap_to_json
from sandbox.pricing.cap_rules import CapSums
from sandbox.protocol.messages import ExtensionMessage, ProtocolError, register_extension

__all__ = ["RELOAD_REFUSED_PREFIX", "CapUsage", "CapUsageReply", "CapUsageRequest", "ReloadRequest"]

# The ErrorReply message prefix of a refused reload.
RELOAD_REFUSED_PREFIX = "catalog not reloaded: "


def _keys(d: dict[str, Any], allowed: set[str]) -> None:
    extra = set(d) - allowed
    if extra:
        raise ProtocolError(f"unexpected keys {sorted(extra)}")


def _time(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise ProtocolError("times must be finite numbers")
    return float(v)


@dataclass(frozen=True, slots=True)
class ReloadRequest(ExtensionMessage):
    """Re-read the catalog file and swap in the owner's reloadable settings (see the module docstring)."""

    TYPE: ClassVar[str] = "owner_reload"

    def body_json(self) -> dict[str, Any]:
        """No fields."""
        return {}


@dataclass(frozen=True, slots=True)
class CapUsageRequest(ExtensionMessage):
    """Cap usage of `datasets` (empty: every dataset)."""

    TYPE: ClassVar[str] = "owner_cap_usage"
    datasets: tuple[str, ...] = ()

    def body_json(self) -> dict[str, Any]:
        """Serialize."""
        return {"datasets": list(self.datasets)}


@dataclass(frozen=True, slots=True)
class CapUsage:
    """One dataset's cap and the sandbox ledger's sums for its current period window and its lifetime.

    `period_start`/`period_end` bound the window (None: unbounded; without a cap the window is the lifetime).
    """

    dataset: str
    cap: OwnerCap | None
    period_start: float | None
    period_end: float | None
    period: CapSums
    lifetime: CapSums


@dataclass(frozen=True, slots=True)
class CapUsageReply(ExtensionMessage):
    """The sandbox's cap usage at time `at`."""

    TYPE: ClassVar[str] = "owner_cap_usage_reply"
    usages: tuple[CapUsage, ...]
    at: float

    def usage(self, dataset: str) -> CapUsage | None:
        """The usage of `dataset`, or None."""
        return next((u for u in self.usages if u.dataset == dataset), None)

    def body_json(self) -> dict[str, Any]:
        """Serialize."""
        return {"at": self.at, "usages": [
            {"dataset": u.dataset, "cap": None if u.cap is None else cap_to_json(u.cap),
             "period_start": u.period_start, "period_end": u.period_end,
             "period": u.period.to_json(), "lifetime": u.lifetime.to_json()}
            for u in self.usages]}


def _reload_from_json(d: dict[str, Any]) -> ReloadRequest:
    _keys(d, {"type"})
    return ReloadRequest()


def _usage_request_from_json(d: dict[str, Any]) -> CapUsageRequest:
    _keys(d, {"type", "datasets"})
    names = d.get("datasets", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ProtocolError("datasets must be a list of strings")
    return CapUsageRequest(tuple(names))


def _usage_reply_from_json(d: dict[str, Any]) -> CapUsageReply:
    _keys(d, {"type", "at", "usages"})
    out = []
    for u in d["usages"]:
        _keys(u, {"dataset", "cap", "period_start", "period_end", "period", "lifetime"})
        out.append(CapUsage(str(u["dataset"]), None if u["cap"] is None else cap_from_json(u["cap"]),
                            _time(u["period_start"]), _time(u["period_end"]), CapSums.from_json(u["period"]),
                            CapSums.from_json(u["lifetime"])))
    at = _time(d["at"])
    if at is None:
        raise ProtocolError("at is required")
    return CapUsageReply(tuple(out), at)


register_extension(ReloadRequest.TYPE, _reload_from_json)
register_extension(CapUsageRequest.TYPE, _usage_request_from_json)
register_extension(CapUsageReply.TYPE, _usage_reply_from_json)
