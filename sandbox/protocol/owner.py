"""Boundary messages for the data owner's settings: reload them without a restart, and read cap usage.

* `ReloadRequest`: the sandbox re-reads its catalog file and, when only the owner's reloadable settings
  changed (caps, grades, verification caps: `sandbox.catalog.RELOADABLE`), swaps them in atomically and
  answers the new public `CatalogInfo`; otherwise it answers `ErrorReply('rejected', reason)` and keeps running
  with the settings it had.
* `CapUsageRequest`: per dataset, the owner's cap and what the sandbox's own cap ledger counts on it this
  period and over the lifetime (`CapUsageReply`): the authoritative figures.

Neither carries data: caps are public settings and the sums are functions of the requests charged.
"""

from __future__ import annotations

from sandbox.owner_caps import OwnerCap
from sandbox.pricing.cap_rules import CapSums
from sandbox.protocol.base import Envelope, Strict

__all__ = ["RELOAD_REFUSED_PREFIX", "CapUsage", "CapUsageReply", "CapUsageRequest", "ReloadRequest"]

# The ErrorReply message prefix of a refused reload.
RELOAD_REFUSED_PREFIX = "catalog not reloaded: "


class ReloadRequest(Envelope, frozen=True, tag="owner_reload"):
    """Re-read the catalog file and swap in the owner's reloadable settings (see the module docstring)."""


class CapUsageRequest(Envelope, frozen=True, tag="owner_cap_usage"):
    """Cap usage of `datasets` (empty: every dataset)."""

    datasets: tuple[str, ...] = ()


class CapUsage(Strict, frozen=True):
    """One dataset's cap and the sandbox ledger's sums for its current period window and its lifetime.

    `period_start`/`period_end` bound the window (None: unbounded; without a cap the window is the lifetime).
    """

    dataset: str
    cap: OwnerCap | None
    period_start: float | None
    period_end: float | None
    period: CapSums
    lifetime: CapSums


class CapUsageReply(Envelope, frozen=True, tag="owner_cap_usage_reply"):
    """The sandbox's cap usage at time `at`."""

    usages: tuple[CapUsage, ...]
    at: float

    def usage(self, dataset: str) -> CapUsage | None:
        """The usage of `dataset`, or None."""
        return next((u for u in self.usages if u.dataset == dataset), None)
