"""privacy_gateway.v1.AdminService: organisations, grant adjustments, revocation, reload, usage, spending.

Operators (role `operator`) may call everything but ListDatasetSpending (reinstatements and alert
acknowledgements included); data owners (role
`data_owner`) may call ListDatasetSpending and GetCapUsage for the datasets their organisation owns
(operators GetCapUsage for every dataset). The interceptor checks the roles (`gateway.rpc.methods`):
everyone else gets PERMISSION_DENIED (reason ROLE_REQUIRED);
revoked identities get PERMISSION_DENIED (reason REVOKED).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from privacy_gateway.v1 import admin_service_pb2 as a_pb
from privacy_gateway.v1 import common_pb2 as common_pb

from gateway.budgets.governor import Governor, Level, rho_loss
from gateway.budgets.ledger import BudgetLimit, GrantKey, PrivacyLoss
from gateway.budgets.owner import CapSpent, CapView, OwnerReload, OwnerSettings, cap_usage, reload_owner_settings
from gateway.errors import ConfigError, GatewayInternalError, InvalidArgumentError, PermissionDeniedError
from gateway.path.calls import Call
from gateway.policy.model import GrantOverride, OrgGrant
from gateway.policy.periods import Period, rfc3339
from gateway.release.usage import build_report
from gateway.rpc.interceptor import Body
from gateway.storage.state import StoredAlert
from sandbox.plans.grades import DEFAULT_GRADE_RULES, USES

__all__ = ["AdminServicer", "parse_time", "reload_policy"]

log = logging.getLogger("gateway.rpc.admin")

MAX_ALERTS = 1000  # the most alerts one ListAlerts answer lists


def parse_time(value: str, field: str) -> float | None:
    """An RFC 3339 timestamp -> seconds since the epoch ('' -> None)."""
    if not value:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidArgumentError(f"{field} must be an RFC 3339 timestamp", field=field) from exc
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.timestamp()


def reload_policy(governor: Governor, owner: OwnerSettings | None = None, *, announce: bool = True
                  ) -> OwnerReload | None:
    """Parse and validate the policy file (grants of every product included); on success swap it in
    atomically (SIGHUP, ReloadPolicy): every call from then on reads the new policy. Then, with `owner`,
    reload the data owner's settings from the sandbox (`gateway.budgets.owner.reload_owner_settings`: caps,
    grades and verification caps in both processes); its outcome is returned, a refusal is not an error.
    With `announce`, bump the shared "policy" generation so every other replica on the same storage reloads
    too (`gateway.rpc.replicas.PolicyFollower`).

    Raises:
        InvalidArgumentError: reason POLICY_INVALID with metadata file/key/problem; nothing changed.
    """
    try:
        governor.reload()
    except ConfigError as exc:
        raise InvalidArgumentError(
            f"policy not reloaded: {exc}", reason="POLICY_INVALID", file=exc.file, key=exc.key,
            problem=exc.problem, field="policy",
        ) from exc
    log.info("policy reloaded from %s", governor.policy_path)
    for line in governor.adjusted_grants():  # SIGHUP has no reply: say in the log what the file does not decide
        log.warning("stored adjustment kept over the policy file: %s (clear it: pgw admin adjust --clear)", line)
    outcome = reload_owner_settings(owner) if owner is not None else None
    if announce:
        governor.state.bump_generation(POLICY_GENERATION)
    return outcome


POLICY_GENERATION = "policy"  # the shared counter a reload bumps (GovernanceStore.generation)


class AdminServicer:
    """privacy_gateway.v1.AdminService."""

    SERVICE = "AdminService"
    METHODS = ("ListOrganizations", "AdjustGrant", "RevokeMember", "RevokeOrganization", "ReloadPolicy",
               "GetUsage", "ListDatasetSpending", "GetCapUsage", "ReinstateMember", "ReinstateOrganization",
               "ListAlerts", "AcknowledgeAlert")

    def __init__(self, governor: Governor, owner: OwnerSettings | None = None) -> None:
        """Serve with `governor`; `owner`: the data owner's settings (reload, cap usage)."""
        self.governor = governor
        self.owner = owner

    def bodies(self) -> dict[str, Body]:
        """The method bodies."""
        return {name: Body(getattr(self, name)) for name in self.METHODS}

    # -- views -----------------------------------------------------------------------------------

    def _grant_summary(self, g: OrgGrant, now: float) -> a_pb.GrantSummary:
        gov = self.governor.governance
        window = g.period.window(now)
        key = GrantKey("", g.dataset, g.purpose)
        if g.zcdp:
            return self._zcdp_grant_summary(g, now)
        org_level = _level(self.governor, BudgetLimit("organization", PrivacyLoss(g.epsilon, g.delta), window),
                           g.period, key, g.organization)
        rem = org_level.remaining
        status = common_pb.BudgetStatus(
            dataset=g.dataset, purpose=g.purpose,
            budget=common_pb.PrivacyLoss(epsilon=g.epsilon, delta=g.delta),
            spent=common_pb.PrivacyLoss(epsilon=org_level.spent.epsilon, delta=org_level.spent.delta),
            remaining=common_pb.PrivacyLoss(epsilon=rem.epsilon, delta=rem.delta),
            max_per_query=common_pb.PrivacyLoss(epsilon=g.max_epsilon_per_query),
            privacy_definition=g.privacy_definition, organization=g.organization,
            limiting_level="organization",
            **self.governor.period_fields(org_level, key, g.organization, now),
        )
        members = []
        for mb in g.members:
            lv = _level(self.governor, BudgetLimit("member", PrivacyLoss(mb.epsilon, mb.delta), window),
                        g.period, GrantKey(mb.member, g.dataset, g.purpose), g.organization)
            members.append(a_pb.MemberBudgetStatus(
                member=mb.member, budget=common_pb.PrivacyLoss(epsilon=mb.epsilon, delta=mb.delta),
                spent=common_pb.PrivacyLoss(epsilon=lv.spent.epsilon, delta=lv.spent.delta),
                remaining=common_pb.PrivacyLoss(epsilon=lv.remaining.epsilon, delta=lv.remaining.delta),
            ))
        adjusted = (g.organization, g.dataset, g.purpose) in self.governor.state.overrides()
        return a_pb.GrantSummary(
            organization=g.organization, dataset=g.dataset, purpose=g.purpose,
            use_class=gov.purposes[g.purpose].use_class, budget=status, members=members, adjusted=adjusted,
        )

    def _zcdp_grant_summary(self, g: OrgGrant, now: float) -> a_pb.GrantSummary:
        """A zCDP grant's summary: rho budgets and spending, each with its (epsilon, delta) at the delta."""
        gov = self.governor.governance
        window = g.period.window(now)
        key = GrantKey("", g.dataset, g.purpose)

        def level(name: str, member: str, rho: float, delta: float) -> Level:
            limit = BudgetLimit(name, PrivacyLoss(0.0, delta / 2, rho), window, "rho")  # type: ignore[arg-type]
            return _level(self.governor, limit, g.period, GrantKey(member, g.dataset, g.purpose), g.organization)

        org_level = level("organization", "", g.rho, g.delta)
        status = common_pb.BudgetStatus(
            dataset=g.dataset, purpose=g.purpose,
            budget=rho_loss(g.rho, 0.0, g.delta),
            spent=rho_loss(org_level.spent.rho, org_level.spent.delta, g.delta),
            remaining=rho_loss(org_level.remaining.rho, 0.0, g.delta),
            max_per_query=rho_loss(g.max_rho_per_query, 0.0, g.delta),
            privacy_definition=g.privacy_definition, organization=g.organization,
            limiting_level="organization",
            **self.governor.period_fields(org_level, key, g.organization, now),
        )
        members = []
        for mb in g.members:
            lv = level("member", mb.member, mb.rho, mb.delta)
            members.append(a_pb.MemberBudgetStatus(
                member=mb.member, budget=rho_loss(mb.rho, 0.0, mb.delta),
                spent=rho_loss(lv.spent.rho, lv.spent.delta, mb.delta),
                remaining=rho_loss(lv.remaining.rho, 0.0, mb.delta),
            ))
        adjusted = (g.organization, g.dataset, g.purpose) in self.governor.state.overrides()
        return a_pb.GrantSummary(
            organization=g.organization, dataset=g.dataset, purpose=g.purpose,
            use_class=gov.purposes[g.purpose].use_class, budget=status, members=members, adjusted=adjusted,
        )

    def ListOrganizations(
        self, request: a_pb.ListOrganizationsRequest, call: Call
    ) -> a_pb.ListOrganizationsResponse:
        """Every organisation with members, roles and grants (spent and remaining this period)."""
        gov = self.governor.governance
        now = self.governor.clock()
        revoked = set(self.governor.state.revocations())
        orgs = []
        for org in gov.organizations.values():
            org_revoked = ("organization", org.id) in revoked
            orgs.append(a_pb.Organization(
                id=org.id, name=org.name, revoked=org_revoked, datasets=list(org.datasets),
                members=[a_pb.OrganizationMember(
                    identity=m, roles=sorted(gov.members[m].roles),
                    revoked=org_revoked or ("member", m) in revoked) for m in org.members],
                grants=[self._grant_summary(g, now) for g in gov.grants if g.organization == org.id],
            ))
        return a_pb.ListOrganizationsResponse(organizations=orgs)

    # -- changes ---------------------------------------------------------------------------------

    def AdjustGrant(
        self, request: a_pb.AdjustGrantRequest, call: Call
    ) -> a_pb.AdjustGrantResponse:
        """Store an override of a grant's budget or per-query maximum."""
        caller = call.identity
        fields = ("epsilon", "delta", "max_epsilon_per_query", "rho", "max_rho_per_query")
        if request.clear:
            if any(request.HasField(f) for f in fields):
                raise InvalidArgumentError("clear removes the stored adjustment: set no number with it",
                                           reason="INVALID_ADJUSTMENT", field="clear")
            cleared = self.governor.clear_adjustment(request.organization, request.dataset, request.purpose)
            self.governor.repin()
            g = self.governor.governance.org_grant(request.organization, request.dataset, request.purpose)
            assert g is not None
            log.info("grant %s/%s/%s adjustment %s by %s", g.organization, g.dataset, g.purpose,
                     "cleared" if cleared else "(none) cleared", caller)
            return a_pb.AdjustGrantResponse(grant=self._grant_summary(g, self.governor.clock()))
        override = GrantOverride(*(getattr(request, f) if request.HasField(f) else None for f in fields))
        for name in fields:
            v = getattr(override, name)
            if v is not None and not (v == v and abs(v) != float("inf") and v >= 0):
                raise InvalidArgumentError(f"{name} must be a finite, non-negative number",
                                           reason="INVALID_ADJUSTMENT", field=name)
        self.governor.adjust(request.organization, request.dataset, request.purpose, override, caller)
        self.governor.repin()  # render the adjusted grant
        g = self.governor.governance.org_grant(request.organization, request.dataset, request.purpose)
        assert g is not None
        log.info("grant %s/%s/%s adjusted by %s", g.organization, g.dataset, g.purpose, caller)
        return a_pb.AdjustGrantResponse(grant=self._grant_summary(g, self.governor.clock()))

    def RevokeMember(
        self, request: a_pb.RevokeMemberRequest, call: Call
    ) -> a_pb.RevokeMemberResponse:
        """Revoke one member (effective for its next request)."""
        caller = call.identity
        if self.governor.member(request.identity) is None:
            raise InvalidArgumentError("unknown member", reason="UNKNOWN_SUBJECT", field="identity")
        self.governor.state.revoke("member", request.identity, caller, request.reason)
        return a_pb.RevokeMemberResponse(identity=request.identity)

    def RevokeOrganization(
        self, request: a_pb.RevokeOrganizationRequest, call: Call
    ) -> a_pb.RevokeOrganizationResponse:
        """Revoke an organisation (effective for its members' next requests)."""
        caller = call.identity
        if request.organization not in self.governor.governance.organizations:
            raise InvalidArgumentError("unknown organisation", reason="UNKNOWN_SUBJECT", field="organization")
        self.governor.state.revoke("organization", request.organization, caller, request.reason)
        return a_pb.RevokeOrganizationResponse(organization=request.organization)

    def ReinstateMember(
        self, request: a_pb.ReinstateMemberRequest, call: Call
    ) -> a_pb.ReinstateMemberResponse:
        """Lift a member's revocation (effective for its next request; its organisation's still applies)."""
        if self.governor.member(request.identity) is None:
            raise InvalidArgumentError("unknown member", reason="UNKNOWN_SUBJECT", field="identity")
        was = self.governor.state.reinstate("member", request.identity)
        log.info("member %s reinstated by %s (%s)", request.identity, call.identity, request.reason)
        return a_pb.ReinstateMemberResponse(identity=request.identity, was_revoked=was)

    def ReinstateOrganization(
        self, request: a_pb.ReinstateOrganizationRequest, call: Call
    ) -> a_pb.ReinstateOrganizationResponse:
        """Lift an organisation's revocation (effective for its members' next requests)."""
        if request.organization not in self.governor.governance.organizations:
            raise InvalidArgumentError("unknown organisation", reason="UNKNOWN_SUBJECT", field="organization")
        was = self.governor.state.reinstate("organization", request.organization)
        log.info("organisation %s reinstated by %s (%s)", request.organization, call.identity, request.reason)
        return a_pb.ReinstateOrganizationResponse(organization=request.organization, was_revoked=was)

    def ListAlerts(self, request: a_pb.ListAlertsRequest, call: Call) -> a_pb.ListAlertsResponse:
        """The alerts the rules fired, newest first."""
        if not 0 <= request.limit <= MAX_ALERTS:
            raise InvalidArgumentError(f"limit must be between 0 and {MAX_ALERTS}", field="limit")
        state = self.governor.state
        rows = state.alert_rows(include_acknowledged=request.include_acknowledged, limit=request.limit or 100)
        return a_pb.ListAlertsResponse(alerts=[_alert_pb(r) for r in rows],
                                       unacknowledged=state.unacknowledged_alerts())

    def AcknowledgeAlert(self, request: a_pb.AcknowledgeAlertRequest, call: Call) -> a_pb.AcknowledgeAlertResponse:
        """Record that the caller reviewed an alert."""
        row = self.governor.state.acknowledge_alert(request.id, call.identity, request.note, self.governor.clock())
        if row is None:
            raise InvalidArgumentError("no alert with this id", reason="UNKNOWN_SUBJECT", field="id")
        return a_pb.AcknowledgeAlertResponse(alert=_alert_pb(row))

    def ReloadPolicy(
        self, request: a_pb.ReloadPolicyRequest, call: Call
    ) -> a_pb.ReloadPolicyResponse:
        """Re-read the policy file; on error nothing changes."""
        owner = reload_policy(self.governor, self.owner)
        self.governor.repin()
        gov = self.governor.governance
        return a_pb.ReloadPolicyResponse(source=gov.source, schema=gov.schema,
                                         organizations=len(gov.organizations), grants=len(gov.grants),
                                         owner_settings_reloaded=owner is not None and owner.reloaded,
                                         owner_settings_message="" if owner is None else owner.message,
                                         adjusted_grants=self.governor.adjusted_grants())

    def GetUsage(self, request: a_pb.GetUsageRequest, call: Call) -> a_pb.GetUsageResponse:
        """The usage report for a range (default: the current calendar month)."""
        start = parse_time(request.period_start, "period_start")
        end = parse_time(request.period_end, "period_end")
        if start is None and end is None:
            w = Period("calendar", "month").window(self.governor.clock())
            start, end = w.start, w.end
        report = build_report(self.governor.ledger.charges_between(start, end), start, end)
        return a_pb.GetUsageResponse(json=report.to_json(), csv=report.to_csv())

    def ListDatasetSpending(
        self, request: a_pb.ListDatasetSpendingRequest, call: Call
    ) -> a_pb.ListDatasetSpendingResponse:
        """Data owners: every request on their datasets."""
        caller = call.identity
        owned = self.governor.governance.owned_datasets(caller)
        if request.dataset:
            if request.dataset not in owned:
                raise PermissionDeniedError("not a dataset of your organisation", dataset=request.dataset)
            owned = (request.dataset,)
        rows = self.governor.state.outcomes(
            owned, parse_time(request.period_start, "period_start"), parse_time(request.period_end, "period_end")
        )
        return a_pb.ListDatasetSpendingResponse(entries=[
            a_pb.SpendingEntry(time=rfc3339(o.created_at), organization=o.organization, member=o.consumer,
                               purpose=o.purpose, use_class=o.use_class, dataset=o.dataset,
                               request_id=o.request_id, outcome=o.outcome, reason=o.reason, epsilon=o.epsilon)
            for o in rows
        ])


    def GetCapUsage(self, request: a_pb.GetCapUsageRequest, call: Call) -> a_pb.GetCapUsageResponse:
        """Data owners (their datasets) and operators (all): each cap and its use in both ledgers (the
        interceptor admits only these two roles)."""
        if self.owner is None or self.owner.catalog is None:
            raise GatewayInternalError("the data owner's settings are not wired")
        member = self.governor.member(call.identity)
        names = tuple(d.name for d in self.owner.catalog.datasets)
        if member is None or "operator" not in member.roles:  # a data owner: its organisation's datasets
            owned = set(self.governor.governance.owned_datasets(call.identity))
            names = tuple(n for n in names if n in owned)
        if request.dataset:
            if request.dataset not in names:
                raise PermissionDeniedError("not a dataset whose caps you may see", dataset=request.dataset)
            names = (request.dataset,)
        views = cap_usage(self.owner.client, self.governor, names)
        catalog = self.owner.catalog
        datasets = []
        for v in views:
            out = _cap_usage_pb(v)
            info = catalog.dataset(v.dataset)
            if info is not None:
                out.columns.extend(a_pb.ColumnGrade(table=t.name, column=c.name, grade=c.grade)
                                   for t in info.tables for c in t.columns)
            datasets.append(out)
        rules = catalog.grade_rules() or DEFAULT_GRADE_RULES
        return a_pb.GetCapUsageResponse(
            datasets=datasets, at=rfc3339(self.governor.clock()),
            grade_rules=[a_pb.GradeRule(grade=g, uses=[u for u in USES if u in uses]) for g, uses in rules.items()])


def _alert_pb(r: StoredAlert) -> a_pb.Alert:
    return a_pb.Alert(id=r.id, time=rfc3339(r.created_at), rule=r.rule, subject=r.subject, detail=r.detail,
                      acknowledged_by=r.acknowledged_by or "",
                      acknowledged_at="" if r.acknowledged_at is None else rfc3339(r.acknowledged_at),
                      note=r.note or "")


def _amount(measure: str, amount: float, delta: float) -> a_pb.CapAmount:
    if measure == "rho":
        return a_pb.CapAmount(rho=amount, delta=delta)
    return a_pb.CapAmount(epsilon=amount, delta=delta)


def _spending(v: CapView, period: CapSpent | None, lifetime: CapSpent | None, error: str) -> a_pb.CapSpending:
    if period is None or lifetime is None:
        return a_pb.CapSpending(available=False, error=error)
    cap = v.cap
    measure = cap.measure if cap is not None else "epsilon"
    out = a_pb.CapSpending(available=True, period_spent=_amount(measure, period.amount, period.delta),
                           lifetime_spent=_amount(measure, lifetime.amount, lifetime.delta),
                           period_uncounted=period.uncounted, lifetime_uncounted=lifetime.uncounted)
    if cap is None:
        return out

    def left(budget: float, budget_delta: float, spent: CapSpent) -> a_pb.CapAmount:
        if spent.uncounted:
            return _amount(measure, 0.0, max(0.0, budget_delta - spent.delta))
        return _amount(measure, max(0.0, budget - spent.amount), max(0.0, budget_delta - spent.delta))

    out.period_remaining.CopyFrom(left(cap.amount, cap.delta, period))
    if cap.lifetime_amount is not None and cap.lifetime_delta is not None:
        out.lifetime_remaining.CopyFrom(left(cap.lifetime_amount, cap.lifetime_delta, lifetime))
    return out


def _cap_usage_pb(v: CapView) -> a_pb.DatasetCapUsage:
    cap = v.cap
    out = a_pb.DatasetCapUsage(
        dataset=v.dataset, owner=v.owner, capped=cap is not None,
        sandbox=_spending(v, v.sandbox_period, v.sandbox_lifetime, v.sandbox_error),
        gateway=_spending(v, v.gateway_period, v.gateway_lifetime, ""),
        period_start=rfc3339(v.period_start), period_end=rfc3339(v.period_end),
    )
    if cap is not None:
        out.measure = cap.measure
        out.per_period.CopyFrom(_amount(cap.measure, cap.amount, cap.delta))
        out.period = cap.period.describe()
        if cap.conversion_delta is not None:
            out.conversion_delta = cap.conversion_delta
        if cap.lifetime_amount is not None and cap.lifetime_delta is not None:
            out.lifetime.CopyFrom(_amount(cap.measure, cap.lifetime_amount, cap.lifetime_delta))
    return out


def _level(governor: Governor, limit: BudgetLimit, period: Period, key: GrantKey, organization: str) -> Level:
    e, d, r = governor.ledger.window_spent(limit, key, organization)
    return Level(limit, period, e, d, r)
