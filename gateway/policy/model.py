"""The operator's policy as the gateway holds it once loaded: the model every decision reads.

Two views of one validated file (`gateway.policy.policy.load_policy` reads it):
* `Governance`, the full model (version 2): organisations and their members with roles, purposes with prices,
  organisation grants per dataset and purpose with a period and optional member budgets, alert rules, and the
  product grants (`gateway.policy.grants`); the operator's stored adjustments apply on top (`with_overrides`);
* `Policy`, the per-consumer view the query path reads (`Governance.as_policy`): one `Grant` per consumer member
  and organisation grant.

The file formats and their parsers: `gateway.policy.governance` (version 2) and `gateway.policy.policy`
(version 1, converted). Nothing here reads files.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal

from gateway.policy.grants import ModelGrant, VerificationPolicy
from gateway.policy.periods import Period

__all__ = [
    "SCHEMA_V2",
    "ZCDP",
    "AlertRule",
    "Consumer",
    "Governance",
    "Grant",
    "GrantOverride",
    "Member",
    "MemberBudget",
    "OrgGrant",
    "Organization",
    "Policy",
    "Purpose",
    "check_grant_numbers",
    "zcdp_equivalent",
    "zcdp_equivalents",
]

SCHEMA_V2 = "privacy_gateway.operator.v2"
ZCDP = "zcdp"


@dataclass(frozen=True, slots=True)
class Member:
    """A certificate identity inside an organisation."""

    identity: str
    organization: str
    roles: frozenset[str]


@dataclass(frozen=True, slots=True)
class Organization:
    """An organisation: its members, and (for data owners) the datasets it owns."""

    id: str
    name: str
    members: tuple[str, ...]
    datasets: tuple[str, ...] = ()
    description: str = ""


@dataclass(frozen=True, slots=True)
class Purpose:
    """A declared purpose; commercial purposes are paid per request unit and per epsilon."""

    name: str
    use_class: str
    currency: str = ""
    price_per_request_unit: Decimal = Decimal(0)
    price_per_epsilon: Decimal = Decimal(0)
    description: str = ""


@dataclass(frozen=True, slots=True)
class MemberBudget:
    """A member's own budget inside its organisation's grant (same period)."""

    member: str
    epsilon: float
    delta: float
    rho: float = 0.0  # zCDP grants: the member's budget in rho (`epsilon` is its equivalent)


@dataclass(frozen=True, slots=True)
class OrgGrant:
    """An organisation's budget on one dataset for one purpose, per period."""

    organization: str
    dataset: str
    purpose: str
    privacy_definition: str
    epsilon: float
    delta: float
    max_epsilon_per_query: float
    period: Period
    members: tuple[MemberBudget, ...] = ()
    # zCDP grants: budget and per-query maximum in rho; `epsilon` / `max_epsilon_per_query` are then
    # their equivalents at `delta` (OpenDP's zCDP -> (epsilon, delta) conversion), for display.
    rho: float = 0.0
    max_rho_per_query: float = 0.0

    @property
    def zcdp(self) -> bool:
        """True when the grant is accounted in zero-concentrated DP (rho)."""
        return self.privacy_definition == ZCDP

    def member_budget(self, identity: str) -> MemberBudget | None:
        """The member's own budget in this grant, or None (only the organisation's applies)."""
        return next((m for m in self.members if m.member == identity), None)


@dataclass(frozen=True, slots=True)
class GrantOverride:
    """An operator's adjustment of a grant, stored in the state database on top of the file."""

    epsilon: float | None = None
    delta: float | None = None
    max_epsilon_per_query: float | None = None
    rho: float | None = None  # zCDP grants only
    max_rho_per_query: float | None = None  # zCDP grants only

    def merged_onto(self, old: GrantOverride) -> GrantOverride:
        """This adjustment on top of an earlier one: fields set here win, the others keep `old`'s."""
        return GrantOverride(*(new if new is not None else prev for new, prev in zip(
            dataclasses.astuple(self), dataclasses.astuple(old), strict=True)))


@dataclass(frozen=True, slots=True)
class AlertRule:
    """One configured alert rule with its parameters."""

    rule: str
    params: tuple[tuple[str, float], ...]

    def param(self, name: str, default: float) -> float:
        """A parameter's value, or `default` for an optional parameter that was not given."""
        return next((v for k, v in self.params if k == name), default)


@dataclass(frozen=True, slots=True)
class Governance:
    """The validated v2 operator policy (also the conversion of a v1 file)."""

    organizations: dict[str, Organization]
    members: dict[str, Member]
    purposes: dict[str, Purpose]
    grants: tuple[OrgGrant, ...]
    alerts: tuple[AlertRule, ...]
    source: str
    schema: str = SCHEMA_V2
    verification: VerificationPolicy = field(default_factory=VerificationPolicy)  # [verification], grants
    model_grants: tuple[ModelGrant, ...] = ()  # [[model_grants]]

    def model_grant(self, consumer: str, dataset: str, purpose: str) -> ModelGrant | None:
        """The consumer's model grant for (dataset, purpose), or None."""
        for g in self.model_grants:
            if (g.consumer, g.dataset, g.purpose) == (consumer, dataset, purpose):
                return g
        return None

    def member(self, identity: str) -> Member | None:
        """The member with this certificate identity, or None."""
        return self.members.get(identity)

    def org_grant(self, organization: str, dataset: str, purpose: str) -> OrgGrant | None:
        """The organisation's grant for (dataset, purpose), or None."""
        for g in self.grants:
            if (g.organization, g.dataset, g.purpose) == (organization, dataset, purpose):
                return g
        return None

    def has_role(self, identity: str, role: str) -> bool:
        """True when `identity` is a member with `role`."""
        m = self.members.get(identity)
        return m is not None and role in m.roles

    def owned_datasets(self, identity: str) -> tuple[str, ...]:
        """The datasets a data_owner member's organisation owns (empty for other roles)."""
        m = self.members.get(identity)
        if m is None or "data_owner" not in m.roles:
            return ()
        return self.organizations[m.organization].datasets

    def with_overrides(self, overrides: Mapping[tuple[str, str, str], GrantOverride]) -> Governance:
        """This policy with the operator's stored adjustments applied (unknown grants are ignored).

        Raises:
            ValueError: an adjustment breaks an invariant (per-query max above the budget, or a member
                budget above the organisation's).
        """
        if not overrides:
            return self
        grants = []
        for g in self.grants:
            o = overrides.get((g.organization, g.dataset, g.purpose))
            if o is not None and g.zcdp:
                if o.epsilon is not None or o.max_epsilon_per_query is not None:
                    raise ValueError("a zcdp grant is stated in rho: adjust its rho, not its epsilon")
                g = zcdp_equivalents(dataclasses.replace(
                    g, delta=g.delta if o.delta is None else o.delta,
                    rho=g.rho if o.rho is None else o.rho,
                    max_rho_per_query=g.max_rho_per_query if o.max_rho_per_query is None else o.max_rho_per_query,
                ))
                check_grant_numbers(g)
            elif o is not None:
                if o.rho is not None or o.max_rho_per_query is not None:
                    raise ValueError(
                        f"a {g.privacy_definition} grant is stated in epsilon: adjust its epsilon, not rho")
                g = dataclasses.replace(
                    g,
                    epsilon=g.epsilon if o.epsilon is None else o.epsilon,
                    delta=g.delta if o.delta is None else o.delta,
                    max_epsilon_per_query=(
                        g.max_epsilon_per_query if o.max_epsilon_per_query is None
                        else o.max_epsilon_per_query
                    ),
                )
                check_grant_numbers(g)
            grants.append(g)
        return dataclasses.replace(self, grants=tuple(grants))

    def as_policy(self) -> Policy:
        """The per-consumer view the query path uses: one Grant per consumer member and org grant.

        A member's Grant shows its own budget when it has one, else the organisation's; the nested
        limits themselves are enforced by the ledger (`gateway.budgets.governor`).
        """
        consumers = {
            m.identity: Consumer(m.identity, self.organizations[m.organization].name)
            for m in self.members.values()
            if "consumer" in m.roles
        }
        grants = []
        for g in self.grants:
            for identity in self.organizations[g.organization].members:
                if identity not in consumers:
                    continue
                own = g.member_budget(identity)
                eps = own.epsilon if own else g.epsilon
                rho = (own.rho if own else g.rho) if g.zcdp else 0.0
                grants.append(Grant(
                    consumer=identity, dataset=g.dataset, purpose=g.purpose,
                    privacy_definition=g.privacy_definition, epsilon=eps,
                    delta=own.delta if own else g.delta,
                    max_epsilon_per_query=min(g.max_epsilon_per_query, eps),
                    rho=rho, max_rho_per_query=min(g.max_rho_per_query, rho),
                ))
        return Policy(consumers=consumers, grants=tuple(grants), source=self.source, governance=self)


def check_grant_numbers(g: OrgGrant) -> None:
    """Invariants of one grant (used at load and for operator adjustments).

    Raises:
        ValueError: the message names the field and the problem.
    """
    for name in ("epsilon", "delta", "max_epsilon_per_query"):
        v = getattr(g, name)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name}: must be a finite, non-negative number, got {v!r}")
    if g.epsilon <= 0 or g.max_epsilon_per_query <= 0:
        raise ValueError("epsilon: must be positive")
    if g.delta >= 1:
        raise ValueError("delta: must be below 1")
    if g.max_epsilon_per_query > g.epsilon:
        raise ValueError("max_epsilon_per_query: must not exceed epsilon")
    if g.privacy_definition == "pure_dp" and g.delta != 0:
        raise ValueError("delta: must be 0 for privacy_definition 'pure_dp'")
    if g.privacy_definition in ("approx_dp", ZCDP) and g.delta <= 0:
        raise ValueError(f"delta: must be positive for privacy_definition {g.privacy_definition!r}")
    if g.zcdp:
        for name in ("rho", "max_rho_per_query"):
            v = getattr(g, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name}: must be a finite, positive number, got {v!r}")
        if g.max_rho_per_query > g.rho:
            raise ValueError("max_rho_per_query: must not exceed rho")
        for m in g.members:
            if m.rho > g.rho:
                raise ValueError(f"members.{m.member}.rho: must not exceed the organisation's rho")
    for m in g.members:
        if not g.zcdp and m.epsilon > g.epsilon:
            raise ValueError(f"members.{m.member}.epsilon: must not exceed the organisation's epsilon")
        if m.delta > g.delta:
            raise ValueError(f"members.{m.member}.delta: must not exceed the organisation's delta")


def zcdp_equivalents(g: OrgGrant) -> OrgGrant:
    """The grant with `epsilon`, `max_epsilon_per_query` and member epsilons set to the equivalents of
    their rho at the grant's delta (OpenDP's conversion; display only, rho is what is accounted)."""
    return dataclasses.replace(
        g, epsilon=zcdp_equivalent(g.rho, g.delta),
        max_epsilon_per_query=zcdp_equivalent(g.max_rho_per_query, g.delta),
        members=tuple(dataclasses.replace(m, epsilon=zcdp_equivalent(m.rho, m.delta)) for m in g.members),
    )


@dataclass(frozen=True, slots=True)
class Consumer:
    """A consumer identified by its client certificate's common name."""

    identity: str
    organization: str
    description: str = ""


@dataclass(frozen=True, slots=True)
class Grant:
    """A consumer's budget on one dataset for one purpose."""

    consumer: str
    dataset: str
    purpose: str
    privacy_definition: str
    epsilon: float
    delta: float
    max_epsilon_per_query: float
    # zCDP grants: the budget and per-query maximum in rho; `epsilon` and `max_epsilon_per_query` are
    # then their (epsilon, delta) equivalents at `delta` (OpenDP's conversion), for display only.
    rho: float = 0.0
    max_rho_per_query: float = 0.0

    @property
    def zcdp(self) -> bool:
        """True when the grant is accounted in zero-concentrated DP (rho)."""
        return self.privacy_definition == ZCDP


def zcdp_equivalent(rho: float, delta: float) -> float:
    """The epsilon of OpenDP's zCDP -> (epsilon, delta) conversion of `rho` at `delta` (display only)."""
    from sandbox.pricing.zcdp import rho_to_epsilon

    return rho_to_epsilon(rho, delta)


@dataclass(frozen=True, slots=True)
class Policy:
    """The validated operator policy."""

    consumers: dict[str, Consumer]
    grants: tuple[Grant, ...]
    source: str
    # The full v2 model (a converted one for v1 files); set by parse_policy.
    governance: Governance | None = None

    @property
    def verification(self) -> VerificationPolicy:
        """The verification settings and grants."""
        return self.governance.verification if self.governance is not None else VerificationPolicy()

    @property
    def model_grants(self) -> tuple[ModelGrant, ...]:
        """The model grants."""
        return self.governance.model_grants if self.governance is not None else ()

    @property
    def identities(self) -> list[str]:
        """Every certificate identity the policy knows (consumers, operators, data owners), sorted."""
        if self.governance is None:
            return sorted(self.consumers)
        return sorted(self.governance.members)

    def consumer(self, identity: str) -> Consumer | None:
        """The consumer with this certificate identity, or None."""
        return self.consumers.get(identity)

    def grant(self, consumer: str, dataset: str, purpose: str) -> Grant | None:
        """The grant for (consumer, dataset, purpose), or None."""
        for g in self.grants:
            if (g.consumer, g.dataset, g.purpose) == (consumer, dataset, purpose):
                return g
        return None

    def grants_of(self, consumer: str) -> tuple[Grant, ...]:
        """All grants of one consumer."""
        return tuple(g for g in self.grants if g.consumer == consumer)
