"""The governance runtime: effective policy (file + overrides), revocation, nested limits, budget status.

`Governor` is what the query path, the admin service and the alert rules share. It turns a member's
grant into the list of limits one ledger transaction must check (member, organisation, the data owner's
cap for its current period and, when the owner sets one, its lifetime cap), and renders budget status with
the period and its refresh time.

The data owner's caps (`caps`) are mirrored from the sandbox's public catalog (`DatasetInfo.caps`, see
`gateway.budgets.owner`), never read from a file, so the gateway counts exactly what the sandbox enforces:
each charge stores what it counts on the owner's cap in the owner's definition (`sandbox.pricing.cap_rules`), and a
release the owner's definition cannot count is refused before anything is charged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from privacy_gateway.v1 import common_pb2 as common_pb

from gateway.budgets.ledger import (
    BudgetLimit,
    CapCounts,
    GrantKey,
    Metering,
    PriorRelease,
    PrivacyLoss,
    Reservation,
)
from gateway.budgets.stores import GovernanceStore, LedgerStore
from gateway.errors import (
    GatewayInternalError,
    InvalidArgumentError,
    OwnerCapIncompatibleError,
    PermissionDeniedError,
    PrivacyBudgetExhaustedError,
)
from gateway.policy.model import Governance, GrantOverride, Member, OrgGrant, Policy
from gateway.policy.periods import (
    DELTA_UNITS,
    EPSILON_UNITS,
    LIFETIME,
    RHO_UNITS,
    Period,
    Window,
    from_units,
    rfc3339,
    to_units,
)
from gateway.policy.policy import load_policy
from gateway.storage.state import Outcome
from sandbox.errors import CAP_LIFETIME_MESSAGE, CAP_MESSAGE, INCOMPATIBLE_PREFIX
from sandbox.owner_caps import OwnerCap
from sandbox.pricing import zcdp
from sandbox.pricing.cap_rules import ReleaseLoss, counts, refusal

__all__ = ["Governor", "Level", "OwnerCap", "owner_limits", "owner_refusal", "rho_loss", "sql_hash"]

log = logging.getLogger("gateway.budgets.governor")


def owner_refusal(message: str, dataset: str, purpose: str) -> None:
    """Raise the client's error for a sandbox refusal by the data owner's cap (the gateway's mirror did not
    refuse first: another gateway spent it, or the owner changed the cap); return for any other message."""
    if message in (CAP_MESSAGE, CAP_LIFETIME_MESSAGE):
        lifetime = message == CAP_LIFETIME_MESSAGE
        raise PrivacyBudgetExhaustedError(
            f"the data owner's {'lifetime cap' if lifetime else 'cap'} on this dataset is exhausted"
            f"{'' if lifetime else ' for this period'}; nothing charged",
            level="dataset_cap_lifetime" if lifetime else "dataset_cap", dataset=dataset, purpose=purpose,
        )
    if message.startswith(INCOMPATIBLE_PREFIX):
        raise OwnerCapIncompatibleError(message[len(INCOMPATIBLE_PREFIX):] + "; nothing was charged",
                                        dataset=dataset)


def owner_limits(cap: OwnerCap, now: float) -> list[tuple[BudgetLimit, Period]]:
    """The data owner's levels for `cap` at `now`: the periodic cap, and the lifetime cap if set."""
    def budget(amount: float, delta: float) -> PrivacyLoss:
        return PrivacyLoss(0.0, delta, amount) if cap.measure == "rho" else PrivacyLoss(amount, delta)

    out = [(BudgetLimit("dataset_cap", budget(cap.amount, cap.delta), cap.window(now), cap.measure), cap.period)]
    if cap.lifetime_amount is not None and cap.lifetime_delta is not None:
        out.append((BudgetLimit("dataset_cap_lifetime", budget(cap.lifetime_amount, cap.lifetime_delta),
                                Window(None, None), cap.measure), LIFETIME))
    return out


@dataclass(frozen=True, slots=True)
class Level:
    """One level's budget, spending and window at one moment (exact units)."""

    limit: BudgetLimit
    period: Period
    spent_eps: int
    spent_delta: int
    spent_rho: int = 0

    @property
    def epsilon_left(self) -> float:
        """The largest pure epsilon this level still admits: its remaining epsilon, or on a rho level the
        epsilon whose epsilon^2 / 2 fits the remaining rho."""
        if self.limit.measure == "rho":
            return math.sqrt(2.0 * self.remaining.rho)
        return self.remaining.epsilon

    @property
    def remaining(self) -> PrivacyLoss:
        """budget - spent, never negative (rho only on a zCDP level, epsilon only on the others)."""
        bd = to_units(self.limit.budget.delta, DELTA_UNITS, up=False)
        delta = from_units(max(0, bd - self.spent_delta), DELTA_UNITS)
        if self.limit.measure == "rho":
            br = to_units(self.limit.budget.rho, RHO_UNITS, up=False)
            return PrivacyLoss(0.0, delta, from_units(max(0, br - self.spent_rho), RHO_UNITS))
        be = to_units(self.limit.budget.epsilon, EPSILON_UNITS, up=False)
        return PrivacyLoss(from_units(max(0, be - self.spent_eps), EPSILON_UNITS), delta)

    @property
    def spent(self) -> PrivacyLoss:
        """Spent this period."""
        return PrivacyLoss(from_units(self.spent_eps, EPSILON_UNITS), from_units(self.spent_delta, DELTA_UNITS),
                           from_units(self.spent_rho, RHO_UNITS))


def rho_loss(rho: float, selection_delta: float, delta: float) -> common_pb.PrivacyLoss:
    """A zCDP amount for the API: rho, and the (epsilon, delta) at the grant's `delta` from OpenDP's
    conversion of that total (with partition selection's `selection_delta` inside the delta)."""
    if rho == 0 and selection_delta == 0:
        return common_pb.PrivacyLoss(epsilon=0.0, delta=0.0, rho=0.0)
    eps, d = zcdp.to_approx_dp(rho, selection_delta, delta)
    return common_pb.PrivacyLoss(epsilon=eps, delta=d, rho=rho)


def sql_hash(sql: str) -> str:
    """A digest of the whitespace- and case-normalised SQL (for the near-identical-query alert)."""
    return hashlib.sha256(" ".join(sql.lower().split()).encode()).hexdigest()[:32]


class Governor:
    """Effective policy, revocations, nested limits and budget status, shared by every RPC."""

    def __init__(
        self,
        policy_path: Path,
        policy: Policy,
        ledger: LedgerStore,
        state: GovernanceStore,
        caps: Mapping[str, OwnerCap],
        owners: Mapping[str, str],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Wire the policy file, the loaded policy, the ledger, the state store and the data owner's caps (from
        the sandbox's public catalog: `gateway.budgets.owner.owner_caps`)."""
        self.policy_path = policy_path
        self.ledger = ledger
        self.state = state
        self.caps = dict(caps)
        self.owners = dict(owners)
        self.clock = clock
        self._lock = threading.Lock()
        self._file_policy = policy
        self._cache: tuple[object, Policy] | None = None
        self._pinned = threading.local()  # a request's snapshot of the effective policy (see `snapshot`)
        self.on_outcome: list[Callable[[Outcome], None]] = []  # alert rules, metrics, audit hooks
        # Checks a reloaded policy must pass before it is swapped in (e.g. model grants against the catalog).
        self.checks: list[Callable[[Policy], None]] = []

    # -- the effective policy ------------------------------------------------------------------

    @contextmanager
    def snapshot(self) -> Iterator[Policy]:
        """Read the effective policy once and use it for the body (one request) on this thread.

        A RunQuery consulted it a dozen times (identity, limits, budget status, outcome, alert rules),
        each a read of the overrides table. Every request still starts from a fresh read, so an
        operator's adjustment or reload, from any gateway process, applies from the next request on;
        within one request every step sees the same policy. Revocations are checked fresh regardless.
        """
        policy = self._fresh()
        self._pinned.policy = policy
        try:
            yield policy
        finally:
            self._pinned.policy = None

    def repin(self) -> None:
        """Inside `snapshot`: replace this thread's snapshot with a fresh read (after this call changed it)."""
        if getattr(self._pinned, "policy", None) is not None:
            self._pinned.policy = self._fresh()

    @property
    def file_policy(self) -> Policy:
        """The policy file as last loaded (without stored overrides): who the members are."""
        return self._file_policy

    def current(self) -> Policy:
        """The file's policy with the stored overrides applied (re-read on every call: multi-process),
        or the request's snapshot inside `snapshot`."""
        pinned: Policy | None = getattr(self._pinned, "policy", None)
        return pinned if pinned is not None else self._fresh()

    def _fresh(self) -> Policy:
        overrides = self.state.overrides()
        with self._lock:
            base = self._file_policy
            cache = self._cache
            if cache is not None and cache[0] == (id(base), overrides):
                return cache[1]
        gov = self._governance_of(base)
        try:
            effective = gov.with_overrides(overrides).as_policy()
        except ValueError as exc:  # an override no longer fits the reloaded file: keep the file's grant
            log.error("grant override ignored: %s", exc)
            effective = base
        with self._lock:
            self._cache = ((id(base), overrides), effective)
        return effective

    @property
    def governance(self) -> Governance:
        """The effective v2 model."""
        return self._governance_of(self.current())

    @staticmethod
    def _governance_of(policy: Policy) -> Governance:
        if policy.governance is None:
            raise GatewayInternalError("policy has no governance model")
        return policy.governance

    def reload(self) -> Policy:
        """Parse and validate the policy file; swap it in only if valid.

        Raises:
            ConfigError: the file is invalid; the running policy is untouched.
        """
        fresh = load_policy(self.policy_path)
        for check in self.checks:
            check(fresh)
        with self._lock:
            self._file_policy = fresh
            self._cache = None
        return self.current()

    def adjust(self, organization: str, dataset: str, purpose: str, override: GrantOverride, by: str) -> None:
        """Validate and store an operator's adjustment of a grant.

        Raises:
            InvalidArgumentError: unknown grant, or the adjusted grant breaks an invariant.
        """
        gov = self.governance
        if gov.org_grant(organization, dataset, purpose) is None:
            raise InvalidArgumentError(
                f"no grant for organisation {organization!r}, dataset {dataset!r}, purpose {purpose!r}",
                reason="GRANT_NOT_FOUND", organization=organization, dataset=dataset, purpose=purpose,
            )
        key = (organization, dataset, purpose)
        stored = self.state.overrides()
        merged = override.merged_onto(stored.get(key, GrantOverride()))
        try:
            self._governance_of(self._file_policy).with_overrides({**stored, key: merged})
        except ValueError as exc:
            raise InvalidArgumentError(f"adjustment refused: {exc}", reason="INVALID_ADJUSTMENT") from exc
        self.state.set_override(key, override, by)

    def clear_adjustment(self, organization: str, dataset: str, purpose: str) -> bool:
        """Remove the stored adjustment of a grant (the file's numbers apply again); False when there was none.

        Raises:
            InvalidArgumentError: no such grant.
        """
        if self.governance.org_grant(organization, dataset, purpose) is None:
            raise InvalidArgumentError(
                f"no grant for organisation {organization!r}, dataset {dataset!r}, purpose {purpose!r}",
                reason="GRANT_NOT_FOUND", organization=organization, dataset=dataset, purpose=purpose,
            )
        return self.state.clear_override((organization, dataset, purpose))

    def adjusted_grants(self) -> list[str]:
        """Each stored adjustment that sets a number other than the policy file's, as
        "org/dataset/purpose: epsilon 4 (file 3)" (what a reload keeps over the file)."""
        file_gov = self._governance_of(self._file_policy)
        out = []
        for (org, ds, purpose), ov in sorted(self.state.overrides().items()):
            g = file_gov.org_grant(org, ds, purpose)
            if g is None:
                continue
            parts = [f"{name} {value:g} (file {getattr(g, name):g})"
                     for name, value in dataclasses.asdict(ov).items()
                     if value is not None and value != getattr(g, name)]
            if parts:
                out.append(f"{org}/{ds}/{purpose}: " + ", ".join(parts))
        return out

    # -- identity ------------------------------------------------------------------------------

    def member(self, identity: str) -> Member | None:
        """The member, or None."""
        return self.governance.member(identity)

    def check_not_revoked(self, identity: str) -> None:
        """Raise PERMISSION_DENIED (reason REVOKED) when the member or its organisation is revoked."""
        m = self.member(identity)
        if m is None:
            return
        kind = self.state.revoked(identity, m.organization)
        if kind is not None:
            raise PermissionDeniedError(
                f"access of this {'member' if kind == 'member' else 'organisation'} has been revoked",
                reason="REVOKED", level=kind,
            )

    def require_role(self, identity: str, role: str) -> Member:
        """The member if it has `role` and is not revoked; PERMISSION_DENIED otherwise."""
        m = self.member(identity)
        if m is None or role not in m.roles:
            raise PermissionDeniedError(f"this RPC needs role {role!r}", reason="ROLE_REQUIRED", role=role)
        self.check_not_revoked(identity)
        return m

    # -- limits and reservation ----------------------------------------------------------------

    def levels_for(self, key: GrantKey, now: float) -> tuple[OrgGrant, Member, list[tuple[BudgetLimit, Period]]]:
        """The member's organisation grant and its limits (member, organisation, cap) at `now`."""
        gov = self.governance
        m = gov.member(key.consumer)
        g = None if m is None else gov.org_grant(m.organization, key.dataset, key.purpose)
        if m is None or g is None:
            raise GatewayInternalError("no organisation grant behind a member grant")
        window = g.period.window(now)
        limits: list[tuple[BudgetLimit, Period]] = []
        own = g.member_budget(m.identity)
        if g.zcdp:
            # zCDP: the levels account rho; partition selection may spend at most half of the delta (the
            # rest is left to convert rho, so the reported (epsilon, delta) at `delta` stays finite).
            if own is not None:
                limits.append((BudgetLimit("member", PrivacyLoss(own.epsilon, own.delta / 2, own.rho), window,
                                           "rho"), g.period))
            limits.append((BudgetLimit("organization", PrivacyLoss(g.epsilon, g.delta / 2, g.rho), window,
                                       "rho"), g.period))
        else:
            if own is not None:
                limits.append((BudgetLimit("member", PrivacyLoss(own.epsilon, own.delta), window), g.period))
            limits.append((BudgetLimit("organization", PrivacyLoss(g.epsilon, g.delta), window), g.period))
        cap = self.caps.get(key.dataset)
        if cap is not None:
            limits += owner_limits(cap, now)
        return g, m, limits

    def set_caps(self, caps: Mapping[str, OwnerCap]) -> None:
        """Swap in the data owner's caps (a reload of the sandbox's catalog); applies from the next charge."""
        self.caps = dict(caps)

    def owner_charge(self, dataset: str, cost: PrivacyLoss | ReleaseLoss
                     ) -> tuple[CapCounts, OwnerCapIncompatibleError | None]:
        """What a charge counts on the owner's cap of `dataset` in the owner's definition (`sandbox.pricing.cap_rules`,
        converting zCDP at the owner's conversion_delta only), and the refusal to raise if the owner's
        definition cannot count it. `cost` is a query charge (classified by `ReleaseLoss.of`) or a release's
        loss in its own definition (model requests: `sandbox.pricing.models.owner_loss`)."""
        cap = self.caps.get(dataset)
        loss = cost if isinstance(cost, ReleaseLoss) else ReleaseLoss.of(cost.epsilon, cost.delta, cost.rho)
        why = refusal(cap, loss, dataset)
        error = None if why is None or cap is None else OwnerCapIncompatibleError(
            f"{why}; nothing was charged", dataset=dataset, capMeasure=cap.measure, release=loss.kind)
        return counts(loss, cap.conversion_delta if cap is not None else None), error

    def reserve(
        self, key: GrantKey, *, request_id: str, fingerprint: str, cost: PrivacyLoss, request_units: int,
        now: float | None = None, durable: bool = True, loss: ReleaseLoss | None = None,
        product: str = "query", product_budget: PrivacyLoss | None = None,
    ) -> Reservation | PriorRelease:
        """Charge `cost` against every level in one ledger transaction (see `Ledger.reserve_nested`;
        `durable=False` defers its fsync to the caller's next completion, as `Ledger.reserve` explains). The
        data owner's levels count the release's loss in the owner's definition: `loss` when given (a model's
        own definition), else the loss `cost` states; a release the owner's cap cannot count is refused
        before anything is charged (OWNER_CAP_INCOMPATIBLE). `product_budget`: the most this product may spend
        of the grant per period (a model grant's limit), checked as one more level."""
        now = self.clock() if now is None else now
        g, m, limits = self.levels_for(key, now)
        if product_budget is not None:
            limits.append((BudgetLimit("member_product", product_budget, g.period.window(now), product=product),
                           g.period))
        purpose = self.governance.purposes[g.purpose]
        metering = Metering(
            organization=m.organization, use_class=purpose.use_class,
            data_owner=self.owners.get(key.dataset, ""), request_units=request_units,
            price_per_request_unit=str(purpose.price_per_request_unit),
            price_per_epsilon=str(purpose.price_per_epsilon), currency=purpose.currency,
        )
        owner, refuse = self.owner_charge(key.dataset, loss if loss is not None else cost)
        return self.ledger.reserve_nested(
            key, request_id=request_id, fingerprint=fingerprint, cost=cost,
            limits=[lim for lim, _ in limits], metering=metering, now=now, durable=durable,
            owner=owner, refuse=refuse, product=product,
        )

    def levels(self, key: GrantKey, now: float | None = None) -> list[Level]:
        """Every level's spending this period."""
        now = self.clock() if now is None else now
        _g, m, limits = self.levels_for(key, now)
        return self._levels(key, m, limits)

    def _levels(
        self, key: GrantKey, m: Member, limits: list[tuple[BudgetLimit, Period]],
        units: tuple[tuple[int, int, int], ...] = (),
    ) -> list[Level]:
        if len(units) == len(limits):  # read by the reservation's own transaction
            return [Level(lim, period, *u) for (lim, period), u in zip(limits, units, strict=True)]
        return [Level(lim, period, *self.ledger.window_spent(lim, key, m.organization)) for lim, period in limits]

    def budget_status(
        self, key: GrantKey, now: float | None = None, *, after: Reservation | None = None
    ) -> common_pb.BudgetStatus:
        """A member's budget status with the period and when it refreshes.

        With `after` (this member's reservation, just made): the status right after that charge, from
        the spending its transaction read (no second read of the ledger), at the reservation's time.
        """
        units: tuple[tuple[int, int, int], ...] = ()
        if after is not None and after.at is not None:
            now, units = after.at, after.level_units
        now = self.clock() if now is None else now
        g, m, limits = self.levels_for(key, now)
        levels = self._levels(key, m, limits, units)
        shown = levels[0]  # the member's own budget if any, else the organisation's
        if g.zcdp:
            return self._zcdp_status(key, g, m, levels, now)
        # an owner's rho cap binds a pure grant at the epsilon whose epsilon^2 / 2 fits its remaining rho
        binding = min(levels, key=lambda lv: (lv.epsilon_left, lv.remaining.delta))
        remaining = binding.remaining
        return common_pb.BudgetStatus(
            dataset=key.dataset, purpose=key.purpose,
            budget=common_pb.PrivacyLoss(epsilon=shown.limit.budget.epsilon, delta=shown.limit.budget.delta),
            spent=common_pb.PrivacyLoss(epsilon=shown.spent.epsilon, delta=shown.spent.delta),
            remaining=common_pb.PrivacyLoss(epsilon=binding.epsilon_left, delta=remaining.delta),
            max_per_query=common_pb.PrivacyLoss(epsilon=min(g.max_epsilon_per_query, shown.limit.budget.epsilon)),
            privacy_definition=g.privacy_definition,
            organization=m.organization,
            limiting_level=binding.limit.level,
            **self.period_fields(shown, key, m.organization, now),
        )

    def _zcdp_status(
        self, key: GrantKey, g: OrgGrant, m: Member, levels: list[Level], now: float
    ) -> common_pb.BudgetStatus:
        """A zCDP grant's status: rho budget, spent and remaining, each with its (epsilon, delta) at the
        grant's delta from OpenDP's conversion of the total (`sandbox.pricing.zcdp.to_approx_dp`).

        `remaining.rho` is the most one request may still spend: the smallest rho left at the member
        and organisation levels and at an owner's rho cap, and at an owner's epsilon cap the largest rho
        whose epsilon at the OWNER's conversion_delta still fits the cap's remaining epsilon (0 when the
        cap's remaining delta cannot hold that conversion delta).
        """
        shown = levels[0]
        own = g.member_budget(m.identity)
        delta = own.delta if own is not None else g.delta
        budget_rho = shown.limit.budget.rho
        spent = shown.spent
        binding, rho_left = shown, shown.remaining.rho
        for lv in levels:
            if lv.limit.measure == "rho" and lv.remaining.rho < rho_left:
                binding, rho_left = lv, lv.remaining.rho
        cap = self.caps.get(key.dataset)
        conversion = cap.conversion_delta if cap is not None else None
        for lv in levels:
            if lv.limit.measure != "epsilon" or lv.limit.level not in ("dataset_cap", "dataset_cap_lifetime"):
                continue
            if conversion is None or lv.remaining.delta < conversion:
                if rho_left > 0:
                    binding, rho_left = lv, 0.0
            elif zcdp.rho_to_epsilon(rho_left, conversion) > lv.remaining.epsilon:
                binding, rho_left = lv, zcdp.epsilon_to_rho(lv.remaining.epsilon, conversion)
        delta_left = min(lv.remaining.delta for lv in levels)
        nothing = spent.rho == 0 and spent.delta == 0
        spent_eps, spent_delta = (0.0, 0.0) if nothing else zcdp.to_approx_dp(spent.rho, spent.delta, delta)
        max_rho = min(g.max_rho_per_query, budget_rho)
        return common_pb.BudgetStatus(
            dataset=key.dataset, purpose=key.purpose,
            budget=common_pb.PrivacyLoss(epsilon=zcdp.rho_to_epsilon(budget_rho, delta), delta=delta,
                                         rho=budget_rho),
            spent=common_pb.PrivacyLoss(epsilon=spent_eps, delta=spent_delta, rho=spent.rho),
            remaining=common_pb.PrivacyLoss(epsilon=zcdp.rho_to_epsilon(rho_left, delta), delta=delta_left,
                                            rho=rho_left),
            max_per_query=common_pb.PrivacyLoss(epsilon=zcdp.rho_to_epsilon(max_rho, delta), delta=delta / 2,
                                                rho=max_rho),
            privacy_definition=g.privacy_definition,
            organization=m.organization,
            limiting_level=binding.limit.level,
            **self.period_fields(shown, key, m.organization, now),
        )

    def period_fields(self, level: Level, key: GrantKey, organization: str, now: float) -> dict[str, str]:
        """period, period_start, period_end, refreshes_at for one level."""
        w = level.limit.window
        if level.period.kind == "rolling":
            oldest = self.ledger.oldest_in_window(level.limit, key, organization)
            refresh = None if oldest is None else oldest + level.period.window_days * 86400.0
        else:
            refresh = w.end
        return {"period": level.period.describe(), "period_start": rfc3339(w.start),
                "period_end": rfc3339(w.end), "refreshes_at": rfc3339(refresh)}

    # -- outcomes ------------------------------------------------------------------------------

    def record_outcome(
        self, *, consumer: str, dataset: str, purpose: str, request_id: str, outcome: str,
        reason: str = "", epsilon: float = 0.0, sql: str = "", now: float | None = None,
    ) -> None:
        """The hook the query path calls once per RunQuery: store the outcome, then run the hooks.

        `outcome` is 'charged', 'replayed', 'refused' or 'failed'. Never raises: a failure to record is
        logged (the answer or refusal has already been decided).
        """
        o = self.outcome(consumer=consumer, dataset=dataset, purpose=purpose, request_id=request_id,
                         outcome=outcome, reason=reason, epsilon=epsilon, sql=sql, now=now)
        if o is not None and self.store_outcome(o):
            self.notify(o)

    def store_outcome(self, o: Outcome) -> bool:
        """Append `o` to the state database; False (logged) if it could not be stored. Never raises."""
        try:
            self.state.record_outcome(o)
        except Exception:
            log.exception("could not record the outcome of request %s", o.request_id)
            return False
        return True

    def outcome(
        self, *, consumer: str, dataset: str, purpose: str, request_id: str, outcome: str,
        reason: str = "", epsilon: float = 0.0, sql: str = "", now: float | None = None,
    ) -> Outcome | None:
        """The outcome record of one request (None, logged, if the governance model cannot place it).

        The query path stores a charged answer's outcome in the same ledger transaction as its
        completion (`StateStore.write_outcome`), then calls `notify`.
        """
        now = self.clock() if now is None else now
        try:
            gov = self.governance
            m = gov.member(consumer)
            org = m.organization if m else ""
            g = gov.org_grant(org, dataset, purpose) if m else None
            use = gov.purposes[g.purpose].use_class if g is not None else ""
            return Outcome(consumer, org, dataset, purpose, use, request_id, outcome, reason, epsilon,
                           sql_hash(sql), now)
        except Exception:
            log.exception("could not record the outcome of request %s", request_id)
            return None

    def notify(self, o: Outcome) -> None:
        """Run the outcome hooks (alert rules) on a stored outcome; never raises."""
        try:
            for hook in list(self.on_outcome):
                hook(o)
        except Exception:
            log.exception("outcome hooks failed for request %s", o.request_id)
