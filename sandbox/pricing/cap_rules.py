"""What one release counts on the data owner's cap, in the owner's privacy definition (pure; shared).

The sandbox's cap ledger (`sandbox.engine.caps`) stores these counts per charge and is the owner's word; the
gateway's ledger stores the same counts (computed by the same functions from the same numbers) to refuse
cleanly first. Conversions use only the owner's `conversion_delta` (`sandbox.owner_caps.OwnerCap`), never a
delta chosen by a consumer or an operator.

A release is one of (its loss as the pricing's OpenDP maps give it):

* pure: epsilon-DP (MaxDivergence);
* approx: (epsilon, delta)-DP with delta > 0 (Approximate(MaxDivergence): partition selection by OpenDP's
  Laplace threshold);
* zcdp: delta_s-approximate rho-zCDP (Approximate(ZeroConcentratedDivergence): Gaussian-family releases, with
  delta_s from OpenDP's Gaussian threshold for partition selection, 0 without it; logistic regression's
  composed rho).

Every charge stores its count in BOTH measures, so a cap whose definition the owner changes still counts
earlier releases soundly (a charge with no count in a measure marks any window holding it as spent):

=============  ============================================  =============================================
release        on an epsilon cap (epsilon, delta)            on a rho cap (rho, delta)
=============  ============================================  =============================================
pure eps       (eps, 0)                                      (eps^2 / 2, 0)
approx         (eps, delta)                                  no count: refused (see below)
(eps, delta)
zcdp           (eps(rho, d_c), d_c + delta_s) with           (rho, delta_s)
(rho, d_s)     d_c = the owner's conversion_delta;
               no conversion_delta: no count, refused
=============  ============================================  =============================================

Why each is sound (composition of the counted guarantees is what a cap bounds):

* Epsilon caps add the (epsilon, delta) of every release: basic composition of approximate DP (Dwork et al.
  2006; Dwork & Roth 2014, Thm 3.16), valid for adaptively chosen releases.
* A pure release is (eps, 0)-DP; an approximate one is (eps, delta)-DP by definition.
* A delta_s-approximate rho-zCDP release is (eps, d_c + delta_s)-DP with eps = rho + 2 sqrt(rho log(1/d_c))
  or better: zCDP implies approximate DP for every d_c > 0 (Bun & Steinke 2016, Prop. 1.3, and its
  approximate form, Section 8). The number is OpenDP's own: `make_fix_delta(make_zCDP_to_approxDP(m), d)`
  (`sandbox.pricing.zcdp.rho_to_epsilon`), the conversion OpenDP applies to an Approximate(zCDP) measurement
  (epsilon at d - delta_s, delta d in total; here d = d_c + delta_s). Each release is converted on its own,
  so each charges its d_c: the (epsilon, delta) cap must hold the conversion delta of every zCDP release of
  a period (an owner expecting many zCDP releases states a rho cap instead).
* Rho caps add rho and delta: approximate zCDP composes by adding both (Bun & Steinke 2016, Section 8;
  OpenDP's `make_composition` over Approximate(zCDP)).
* A pure eps-DP release is (eps^2 / 2)-zCDP (Bun & Steinke 2016, Prop. 1.4): OpenDP's
  `make_pureDP_to_zCDP`, in exact integers (`pure_to_rho_units`, rounded up; a unit test checks it against
  OpenDP).
* An (eps, delta > 0)-DP release has no zCDP count: OpenDP has no conversion from Approximate(MaxDivergence)
  to Approximate(zCDP), and the route through Bun & Steinke's approximate zCDP needs, for each pair of
  neighbouring datasets, one pair of conditioning events under which both directions are eps-indistinguish-
  able, which the (eps, delta) map of a measurement does not certify. It is refused before anything is
  charged, with a reason naming the owner's definition.

Counts are exact integer units (`sandbox.pricing.periods`): every number rounds up, budgets round down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from sandbox.owner_caps import OwnerCap
from sandbox.pricing import zcdp
from sandbox.pricing.periods import DELTA_UNITS, EPSILON_UNITS, RHO_UNITS, to_units
from sandbox.protocol.base import Strict

__all__ = ["CapCounts", "CapSums", "ReleaseLoss", "counts", "pure_to_rho_units", "refusal"]

ReleaseKind = Literal["pure", "approx", "zcdp"]


def pure_to_rho_units(epsilon_units: int) -> int:
    """The zCDP cost, in rho units rounded up, of a pure-DP charge of `epsilon_units`: rho = epsilon^2 / 2,
    the map of OpenDP's `make_pureDP_to_zCDP` (exact integer arithmetic)."""
    return -(-epsilon_units * epsilon_units * RHO_UNITS // (2 * EPSILON_UNITS * EPSILON_UNITS))


@dataclass(frozen=True, slots=True)
class ReleaseLoss:
    """A release's privacy loss in its own definition (see the module docstring)."""

    kind: ReleaseKind
    epsilon: float = 0.0
    delta: float = 0.0
    rho: float = 0.0

    @classmethod
    def of(cls, epsilon: float, delta: float, rho: float) -> ReleaseLoss:
        """Classify a priced loss: rho > 0 is zCDP (delta its partition selection's), else delta > 0 is
        approximate DP, else pure DP."""
        if rho > 0:
            return cls("zcdp", 0.0, delta, rho)
        if delta > 0:
            return cls("approx", epsilon, delta)
        return cls("pure", epsilon)

    def describe(self) -> str:
        """e.g. 'zCDP rho 0.01 (selection delta 0)'."""
        if self.kind == "zcdp":
            return f"zCDP rho {self.rho!r} (selection delta {self.delta!r})"
        if self.kind == "approx":
            return f"approximate DP (epsilon {self.epsilon!r}, delta {self.delta!r})"
        return f"pure DP epsilon {self.epsilon!r}"


@dataclass(frozen=True, slots=True)
class CapCounts:
    """What one charge counts on the owner's cap, in exact units, in both definitions.

    Attributes:
        epsilon_units, delta_units: On an epsilon cap (nano-epsilon, atto-delta).
        rho_units, rho_delta_units: On a rho cap (nano-rho, atto-delta).
        no_epsilon: The release has no epsilon count (zCDP without the owner's conversion_delta).
        no_rho: The release has no rho count (approximate DP with delta > 0).
    """

    epsilon_units: int = 0
    delta_units: int = 0
    rho_units: int = 0
    rho_delta_units: int = 0
    no_epsilon: bool = False
    no_rho: bool = False

    def in_measure(self, measure: str) -> tuple[int, int, bool]:
        """(amount units, delta units, has no count) on a cap measured in `measure`."""
        if measure == "rho":
            return self.rho_units, self.rho_delta_units, self.no_rho
        return self.epsilon_units, self.delta_units, self.no_epsilon

    def as_row(self) -> tuple[int, int, int, int, int, int]:
        """The six stored columns, flags as 0/1."""
        return (self.epsilon_units, self.delta_units, self.rho_units, self.rho_delta_units,
                int(self.no_epsilon), int(self.no_rho))


class CapSums(Strict, frozen=True):  # a record of the wire schema (sandbox.protocol.base)
    """The sums of `CapCounts` over a window (flags: how many charges lack a count in that measure)."""

    epsilon_units: int = 0
    delta_units: int = 0
    rho_units: int = 0
    rho_delta_units: int = 0
    no_epsilon: int = 0
    no_rho: int = 0

    def in_measure(self, measure: str) -> tuple[int, int, bool]:
        """(amount units, delta units, some charge has no count) in `measure`."""
        if measure == "rho":
            return self.rho_units, self.rho_delta_units, self.no_rho > 0
        return self.epsilon_units, self.delta_units, self.no_epsilon > 0

    def to_json(self) -> list[int]:
        """The six sums as a list."""
        return [self.epsilon_units, self.delta_units, self.rho_units, self.rho_delta_units, self.no_epsilon,
                self.no_rho]

    @classmethod
    def from_json(cls, v: list[int]) -> CapSums:
        """Decode `to_json`."""
        if len(v) != 6 or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in v):
            raise ValueError("malformed cap sums")
        return cls(*v)


def counts(loss: ReleaseLoss, conversion_delta: float | None) -> CapCounts:
    """What `loss` counts on a cap in each definition, converting zCDP at the owner's `conversion_delta`."""
    up = {"up": True}
    if loss.kind == "pure":
        e = to_units(loss.epsilon, EPSILON_UNITS, **up)
        return CapCounts(e, 0, pure_to_rho_units(e), 0)
    if loss.kind == "approx":
        return CapCounts(to_units(loss.epsilon, EPSILON_UNITS, **up), to_units(loss.delta, DELTA_UNITS, **up),
                         no_rho=True)
    r = to_units(loss.rho, RHO_UNITS, **up)
    ds = to_units(loss.delta, DELTA_UNITS, **up)
    if conversion_delta is None:
        return CapCounts(0, 0, r, ds, no_epsilon=True)
    eps = zcdp.rho_to_epsilon(loss.rho, conversion_delta)
    if not math.isfinite(eps):  # pragma: no cover - conversion_delta is validated to (0, 1)
        return CapCounts(0, 0, r, ds, no_epsilon=True)
    return CapCounts(to_units(eps, EPSILON_UNITS, **up), to_units(conversion_delta, DELTA_UNITS, **up) + ds,
                     r, ds)


def refusal(cap: OwnerCap | None, loss: ReleaseLoss, dataset: str) -> str | None:
    """Why the owner's cap on `dataset` cannot count `loss` (the release is refused before any charge), or
    None. Depends only on the release's definition and the owner's cap."""
    if cap is None:
        return None
    if cap.measure == "epsilon" and loss.kind == "zcdp" and cap.conversion_delta is None:
        return (f"the data owner caps dataset {dataset!r} in (epsilon, delta) and sets no conversion_delta, "
                "so a zCDP release cannot be counted on the cap")
    if cap.measure == "rho" and loss.kind == "approx":
        return (f"the data owner caps dataset {dataset!r} in rho (zCDP); an (epsilon, delta) release with "
                "delta > 0 has no zCDP conversion (use pure DP or a zcdp grant)")
    return None
