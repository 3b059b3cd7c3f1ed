"""The data owner's settings in the gateway: mirrored from the sandbox, reloaded without a restart, and shown.

The sandbox publishes the owner's caps, per-subject verification caps and grade rules in its public catalog
(`sandbox.protocol.messages.CatalogInfo`), so the gateway mirrors exactly what the sandbox enforces, also when the
sandbox runs on another host and its catalog file is not readable here. `OwnerSettings` holds what uses them
(the governor's caps; the catalog and grade rules of the query and model products); `reload_owner_settings`
asks the sandbox to re-read its file (`sandbox.protocol.owner.ReloadRequest`) and applies the reply, which is
what `gateway.rpc.admin.reload_policy` (SIGHUP, ReloadPolicy) calls; `cap_usage` reads how much of each cap is
spent, as the sandbox's own cap ledger counts it (the authoritative figure) and as the gateway's ledger
counts it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.budgets.governor import Governor
from gateway.policy.periods import DELTA_UNITS, EPSILON_UNITS, RHO_UNITS, from_units
from sandbox.client import SandboxClient, SandboxConnectionError
from sandbox.owner_caps import OwnerCap
from sandbox.plans.grades import DEFAULT_GRADE_RULES
from sandbox.pricing.cap_rules import CapSums
from sandbox.protocol.messages import CatalogInfo, ErrorReply
from sandbox.protocol.owner import CapUsageReply

__all__ = ["CapSpent", "CapView", "CatalogHolder", "OwnerReload", "OwnerSettings", "cap_usage", "grade_rules",
           "owner_caps", "reload_owner_settings"]

log = logging.getLogger("gateway.budgets.owner")


def owner_caps(catalog: CatalogInfo) -> dict[str, OwnerCap]:
    """The data owner's cap of every capped dataset in the sandbox's public catalog."""
    return {d.name: d.caps for d in catalog.datasets if d.caps is not None}


def grade_rules(catalog: CatalogInfo) -> Mapping[str, frozenset[str]]:
    """The owner's grade rules as the sandbox publishes them (the built-in rules if it publishes none)."""
    return catalog.grade_rules() or DEFAULT_GRADE_RULES


class CatalogHolder(Protocol):
    """Something that prices or checks requests with the public catalog and the owner's grade rules (the
    query product, the model products)."""

    catalog: CatalogInfo
    grade_rules: Mapping[str, frozenset[str]]


@dataclass(frozen=True, slots=True)
class OwnerReload:
    """The outcome of a reload of the owner's settings: applied (with the new catalog) or why not."""

    reloaded: bool
    message: str
    catalog: CatalogInfo | None = None


class OwnerSettings:
    """The data owner's settings as the gateway applies them, and the sandbox they come from."""

    def __init__(self, client: SandboxClient, governor: Governor, holders: Sequence[CatalogHolder]) -> None:
        """Apply the sandbox's settings to `governor` (caps) and `holders` (catalog and grade rules)."""
        self.client = client
        self.governor = governor
        self.holders = tuple(holders)
        self._lock = threading.Lock()
        self.catalog: CatalogInfo | None = None

    def apply(self, catalog: CatalogInfo) -> None:
        """Make the gateway use `catalog` and the owner's settings in it from the next request on."""
        rules = grade_rules(catalog)
        with self._lock:
            for h in self.holders:
                h.catalog = catalog
                h.grade_rules = rules
            self.governor.set_caps(owner_caps(catalog))
            self.catalog = catalog


def reload_owner_settings(settings: OwnerSettings) -> OwnerReload:
    """Have the sandbox re-read its catalog and swap in the owner's caps, grades and verification caps, then
    apply the same settings here (the governor's caps, the products' catalog and grade rules).

    Never raises for a refusal: when the sandbox refuses (a data-defining part changed, or the file is
    invalid) or cannot be reached, both processes keep the settings they had and the outcome says why.
    """
    try:
        reply = settings.client.reload()
    except SandboxConnectionError as exc:
        log.error("data owner's settings not reloaded: the sandbox is not reachable: %s", exc)
        return OwnerReload(False, "the sandbox is not reachable; the owner's settings are unchanged")
    if isinstance(reply, ErrorReply):
        log.error("data owner's settings not reloaded: %s", reply.message)
        return OwnerReload(False, reply.message or "the sandbox refused the reload")
    settings.apply(reply)
    capped = sorted(owner_caps(reply))
    log.info("data owner's settings reloaded; caps on %s", ", ".join(capped) or "no dataset")
    return OwnerReload(True, f"reloaded: caps on {len(capped)} dataset(s)", reply)


# -- cap usage ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CapSpent:
    """Spending on a cap in its measure: amount (epsilon or rho) and delta, exact units converted for display.

    `uncounted`: a release with no count in the cap's definition lies in the window (the cap counts as spent).
    """

    amount: float
    delta: float
    uncounted: bool = False


@dataclass(frozen=True, slots=True)
class CapView:
    """One dataset's cap as both ledgers count it now (`sandbox` is None when the sandbox was not reachable)."""

    dataset: str
    owner: str
    cap: OwnerCap | None
    period_start: float | None
    period_end: float | None
    sandbox_period: CapSpent | None
    sandbox_lifetime: CapSpent | None
    gateway_period: CapSpent
    gateway_lifetime: CapSpent
    sandbox_error: str = ""


def _per(cap: OwnerCap | None) -> int:
    return RHO_UNITS if cap is not None and cap.measure == "rho" else EPSILON_UNITS


def _from_sums(sums: CapSums, cap: OwnerCap | None) -> CapSpent:
    amount, delta, uncounted = sums.in_measure(cap.measure if cap is not None else "epsilon")
    return CapSpent(from_units(amount, _per(cap)), from_units(delta, DELTA_UNITS), uncounted)


def cap_usage(client: SandboxClient, governor: Governor, datasets: tuple[str, ...]) -> list[CapView]:
    """Per dataset of `datasets`: the owner's cap (as the sandbox states it) and what is spent this period and
    over the lifetime in the sandbox's cap ledger and in the gateway's ledger."""
    now = governor.clock()
    reply: CapUsageReply | None = None
    error = ""
    try:
        answer = client.cap_usage(datasets)
        if isinstance(answer, ErrorReply):
            error = answer.message or "the sandbox refused"
        else:
            reply = answer
    except SandboxConnectionError as exc:
        error = f"the sandbox is not reachable: {exc}"
    out = []
    owners = governor.owners
    for name in datasets:
        used = reply.usage(name) if reply is not None else None
        cap = used.cap if used is not None else governor.caps.get(name)
        mirror = governor.caps.get(name) or cap  # what the gateway's levels check (the same, once reloaded)
        gateway_lifetime = _from_sums(governor.ledger.owner_sums(name, None, None), mirror)
        gateway_period = gateway_lifetime
        if mirror is not None:
            mw = mirror.window(now)
            gateway_period = _from_sums(governor.ledger.owner_sums(name, mw.start, mw.end), mirror)
        w = cap.window(now) if cap is not None else None
        out.append(CapView(
            dataset=name, owner=owners.get(name, ""), cap=cap,
            period_start=w.start if w is not None else None, period_end=w.end if w is not None else None,
            sandbox_period=_from_sums(used.period, cap) if used is not None else None,
            sandbox_lifetime=_from_sums(used.lifetime, cap) if used is not None else None,
            gateway_period=gateway_period, gateway_lifetime=gateway_lifetime,
            sandbox_error="" if used is not None else (error or "no such dataset in the sandbox"),
        ))
    return out
