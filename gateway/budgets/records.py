"""The ledger's records: privacy losses, grant keys, reservations, budget limits, and the exhaustion rules.

Pure values and functions shared by the ledger (`gateway.budgets.ledger`), its reads and its schema.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

from gateway.errors import (
    PrivacyBudgetExhaustedError,
)
from gateway.policy.periods import DELTA_UNITS, EPSILON_UNITS, RHO_UNITS, Window, from_units, rfc3339, to_units
from sandbox.pricing.cap_rules import CapCounts, ReleaseLoss, counts, pure_to_rho_units

ChargeStatus = Literal["reserved", "released", "failed"]


_VERIFY_RELATIVE_TOLERANCE = 1e-9


def owner_counts(cost: PrivacyLoss, conversion_delta: float | None = None) -> CapCounts:
    """What a charge of `cost` counts on the data owner's cap, converting zCDP at the owner's
    `conversion_delta` (`sandbox.pricing.cap_rules.counts`; the governor passes the owner's, None: no epsilon count)."""
    return counts(ReleaseLoss.of(cost.epsilon, cost.delta, cost.rho), conversion_delta)


def zcdp_columns(epsilon_units: int, delta_units: int, rho_units: int) -> tuple[int, int]:
    """(zcdp_units, no_zcdp) of a charge: what it counts on a zCDP level (see the schema)."""
    if rho_units > 0:
        return rho_units, 0
    if epsilon_units > 0 and delta_units > 0:
        return 0, 1
    return pure_to_rho_units(epsilon_units), 0


@dataclass(frozen=True, slots=True)
class PrivacyLoss:
    """An (epsilon, delta) privacy loss, or for zCDP grants a rho: all finite, >= 0, delta < 1.

    Attributes:
        epsilon: The pure-DP part of the loss. For a zCDP charge: OpenDP's conversion of its rho at the
            grant's delta less the selection delta (`conversion_delta`), as the API reports it and billing
            prices it; what it counts on the data owner's cap follows the owner's rule (`sandbox.pricing.cap_rules`).
        delta: The approximate-DP part of the loss (zCDP: partition selection's delta).
        rho: zCDP charges only: the rho the grant's levels account.
        conversion_delta: zCDP charges only: the delta at which `epsilon` converts rho; an epsilon-measured
            grant level (a grant switched from zcdp) counts it as delta with the charge.
    """

    epsilon: float
    delta: float = 0.0
    rho: float = 0.0
    conversion_delta: float = 0.0

    def __post_init__(self) -> None:
        """Validates and normalizes both fields to float.

        Raises:
            ValueError: A field is not a real number, is not finite, or is out of range.
        """
        for name in ("epsilon", "delta", "rho", "conversion_delta"):
            value: object = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a real number, got {type(value).__name__}")
            as_float = float(value)
            if not math.isfinite(as_float):
                raise ValueError(f"{name} must be finite, got {as_float!r}")
            object.__setattr__(self, name, as_float)
        if self.epsilon < 0.0:
            raise ValueError(f"epsilon must be >= 0, got {self.epsilon!r}")
        if self.rho < 0.0:
            raise ValueError(f"rho must be >= 0, got {self.rho!r}")
        if not 0.0 <= self.delta < 1.0:
            raise ValueError(f"delta must be in [0, 1), got {self.delta!r}")
        if not 0.0 <= self.conversion_delta < 1.0:
            raise ValueError(f"conversion_delta must be in [0, 1), got {self.conversion_delta!r}")


@dataclass(frozen=True, slots=True)
class GrantKey:
    """The unit a budget is granted on: one consumer, one dataset, one purpose.

    Attributes:
        consumer: The authenticated consumer identity.
        dataset: The dataset name.
        purpose: The purpose the grant was made for.
    """

    consumer: str
    dataset: str
    purpose: str


@dataclass(frozen=True, slots=True)
class Reservation:
    """A fresh charge, committed (and durable, unless reserved with ``durable=False``: then durable with
    the caller's next ``complete``/``fail``/``release_unused``, before which nothing may be released).

    Attributes:
        request_id: The request id the charge was made for.
        key: The grant the charge was made against.
        cost: The privacy loss charged.
        spent_after: The total spent on ``key`` including this charge.
        level_units: For a nested reservation: per limit (in the order given), the exact (epsilon,
            delta, rho) units spent in its window including this charge, read in the charging
            transaction (so the budget status of the answer needs no second read).
        at: For a nested reservation: the time its windows were taken at.
    """

    request_id: str
    key: GrantKey
    cost: PrivacyLoss
    spent_after: PrivacyLoss
    level_units: tuple[tuple[int, int, int], ...] = ()
    at: float | None = None


@dataclass(frozen=True, slots=True)
class PriorRelease:
    """The request id was already answered: replay this response, do not run the query again.

    Attributes:
        request_id: The request id that was answered.
        response: The serialized answer stored by ``Ledger.complete``.
    """

    request_id: str
    response: bytes


@dataclass(frozen=True, slots=True)
class ChargeRecord:
    """One charge as recorded in the ledger.

    Attributes:
        request_id: The request id the charge was made for.
        cost: The privacy loss charged.
        status: 'reserved' (running or crashed), 'released' (answered) or 'failed' (charged).
        created_at: When the charge was made, in seconds since the Unix epoch.
    """

    request_id: str
    cost: PrivacyLoss
    status: ChargeStatus
    created_at: float


@dataclass(frozen=True, slots=True)
class StaleCharge:
    """A charge the settler must settle or audit: its key, request id, cost and status."""

    key: GrantKey
    request_id: str
    cost: PrivacyLoss
    product: str
    created_at: float
    status: str


def _stale(row: Sequence[object], status: str) -> StaleCharge:
    consumer, request_id, dataset, purpose, eps, delta, rho_units, product, created = row
    return StaleCharge(GrantKey(str(consumer), str(dataset), str(purpose)), str(request_id),
                       PrivacyLoss(float(cast(float, eps)), float(cast(float, delta)),
                                   from_units(int(cast(int, rho_units)), RHO_UNITS)),
                       str(product), float(cast(float, created)), status)


def _agrees(total: float, recomputed: float) -> bool:
    return math.isclose(total, recomputed, rel_tol=_VERIFY_RELATIVE_TOLERANCE, abs_tol=1e-12)


def _exhausted(
    key: GrantKey,
    cost: PrivacyLoss,
    spent: PrivacyLoss,
    budget: PrivacyLoss,
    *,
    epsilon_exceeded: bool,
) -> PrivacyBudgetExhaustedError:
    remaining_epsilon = max(0.0, budget.epsilon - spent.epsilon)
    remaining_delta = max(0.0, budget.delta - spent.delta)
    if epsilon_exceeded:
        what, requested, remaining = "epsilon", cost.epsilon, remaining_epsilon
    else:
        what, requested, remaining = "delta", cost.delta, remaining_delta
    return PrivacyBudgetExhaustedError(
        f"the request costs {what} {requested!r} but only {remaining!r} remains"
        f" on dataset {key.dataset} for purpose {key.purpose}",
        requestedEpsilon=repr(cost.epsilon),
        remainingEpsilon=repr(remaining_epsilon),
        requestedDelta=repr(cost.delta),
        remainingDelta=repr(remaining_delta),
        dataset=key.dataset,
        purpose=key.purpose,
    )


BudgetLevel = Literal["member", "organization", "dataset_cap", "dataset_cap_lifetime", "member_product"]


_OWNER_LEVELS = frozenset({"dataset_cap", "dataset_cap_lifetime"})


@dataclass(frozen=True, slots=True)
class BudgetLimit:
    """One budget a charge must fit, for the current period.

    Attributes:
        level: 'member' (the member's own budget on the grant), 'organization' (all members of the
            organisation on the grant), 'dataset_cap' (the data owner's cap: everyone on the dataset) or
            'dataset_cap_lifetime' (the owner's lifetime cap), or 'member_product' (the member's charges of one
            product on the grant: a model grant's limit inside the organisation's grant).
        budget: What the level allows per period.
        window: The charges that count now (from ``Period.window(now)``).
        measure: What the level accounts: 'epsilon' (pure and approximate DP grants; an owner's epsilon
            cap) or 'rho' (a zCDP grant's member and organisation levels, an owner's rho cap: the sum of
            rho; delta is partition selection's). The owner's levels read what each charge counts on the
            owner's cap (`sandbox.pricing.cap_rules`), not the grant's numbers.
    """

    level: BudgetLevel
    budget: PrivacyLoss
    window: Window
    measure: Literal["epsilon", "rho"] = "epsilon"
    product: str = ""  # 'member_product': the product whose charges the level counts (a model grant's limit)


@dataclass(frozen=True, slots=True)
class Metering:
    """Who a charge is billed to and at what prices, stored with the charge (prices as decimal text)."""

    organization: str
    use_class: str = ""
    data_owner: str = ""
    request_units: int = 0
    price_per_request_unit: str = "0"
    price_per_epsilon: str = "0"
    currency: str = ""


def _units(cost: PrivacyLoss) -> tuple[int, int]:
    """A charge in exact units, rounded up (see ``sandbox.pricing.periods``)."""
    return to_units(cost.epsilon, EPSILON_UNITS, up=True), to_units(cost.delta, DELTA_UNITS, up=True)


def _nested_exhausted(
    key: GrantKey,
    limit: BudgetLimit,
    cost: PrivacyLoss,
    spent_eps: int,
    spent_delta: int,
    budget_eps: int,
    budget_delta: int,
    *,
    epsilon_exceeded: bool,
    level_cost: tuple[int, int] | None = None,
) -> PrivacyBudgetExhaustedError:
    """The refusal naming the level. ``level_cost``: what the charge counts at the level, (amount, delta)
    units (the data owner's levels count the owner's rule, not the grant's numbers)."""
    rho = limit.measure == "rho"
    per = RHO_UNITS if rho else EPSILON_UNITS
    # For a rho level, `spent_eps`/`budget_eps` are in rho units.
    remaining_m = from_units(max(0, budget_eps - spent_eps), per)
    remaining_epsilon = 0.0 if rho else remaining_m
    remaining_delta = from_units(max(0, budget_delta - spent_delta), DELTA_UNITS)
    what = {"member": "your own budget", "organization": "your organisation's budget",
            "dataset_cap": "the data owner's cap on the dataset",
            "dataset_cap_lifetime": "the data owner's lifetime cap on the dataset",
            "member_product": f"your {limit.product} grant's limit"}[limit.level]
    when = "over its lifetime" if limit.level == "dataset_cap_lifetime" else "this period"
    measure = ("rho" if rho else "epsilon") if epsilon_exceeded else "delta"
    requested = {"rho": cost.rho, "epsilon": cost.epsilon, "delta": cost.delta}[measure]
    if level_cost is not None:
        requested = from_units(level_cost[1], DELTA_UNITS) if measure == "delta" else from_units(level_cost[0], per)
    remaining = remaining_delta if measure == "delta" else remaining_m
    extra = {"requestedRho": repr(cost.rho), "remainingRho": repr(remaining_m)} if rho else {}
    return PrivacyBudgetExhaustedError(
        f"the request costs {measure} {requested!r} but only"
        f" {remaining!r} remains of {what} {when} on dataset {key.dataset}",
        level=limit.level,
        **extra,
        requestedEpsilon=repr(cost.epsilon),
        remainingEpsilon=repr(remaining_epsilon),
        requestedDelta=repr(cost.delta),
        remainingDelta=repr(remaining_delta),
        dataset=key.dataset,
        purpose=key.purpose,
        periodStart=rfc3339(limit.window.start),
        refreshesAt=rfc3339(limit.window.end),
    )
