"""The operator's policy file, version 2, and its parser: organisations, members and roles, purposes and prices, org
grants. What a parsed file becomes is `gateway.policy.model`.

Format (TOML, `schema = "privacy_gateway.operator.v2"`; complete, commented example in
`policies/operator.toml`):

    [organizations.acme-bank]                  # organisation id
    name = "ACME Bank"
    [organizations.acme-bank.members.acme-bank-analyst]    # a client certificate common name
    roles = ["consumer"]                       # consumer | operator | data_owner | auditor

    [purposes.credit-risk]
    use_class = "commercial"                   # commercial (paid) | public_welfare (free)
    currency = "EUR"
    price_per_request_unit = 0.5
    price_per_epsilon = 20.0

    [[grants]]                                 # organisation x dataset x purpose
    organization = "acme-bank"
    dataset = "registry"
    purpose = "credit-risk"
    privacy_definition = "pure_dp"
    epsilon = 10.0                             # the organisation's budget per period
    delta = 0.0
    max_epsilon_per_query = 1.0
    period = "month"                           # month | week | day (UTC calendar) | rolling (+ window_days) | lifetime
    [grants.members.acme-bank-intern]          # optional: a member's budget inside the organisation's
    epsilon = 2.0
    delta = 0.0

    [[grants]]                                 # zCDP: Gaussian-family releases, accounted in rho
    organization = "acme-bank"
    dataset = "registry"
    purpose = "research"
    privacy_definition = "zcdp"
    rho = 0.5                                  # instead of epsilon
    delta = 1e-6                               # > 0: spending is reported as (epsilon, delta) at it
    max_rho_per_query = 0.05                   # instead of max_epsilon_per_query
    period = "month"
    [grants.members.acme-bank-intern]          # member budgets of a zcdp grant: rho and delta
    rho = 0.1
    delta = 1e-6

    [[alerts]]
    rule = "grant_near_exhaustion"
    threshold = 0.9

Privacy-relevant numbers have no defaults; NaN, infinities and negative numbers are refused; a member's
budget cannot exceed its organisation's; unknown keys are refused. Every problem raises
`ConfigError(file, key, problem)`.

Version 1 files (`privacy_gateway.operator.v1`, one budget per consumer) are converted: every v1
consumer becomes a one-member organisation (so budgets stay per consumer, as before), every grant
keeps its numbers with `period = "lifetime"`, and every purpose is `public_welfare` (v1 had no prices).
"""

from __future__ import annotations

import math
import re
from collections.abc import Set
from decimal import Decimal
from typing import Any

from gateway.errors import ConfigError
from gateway.policy.model import (
    SCHEMA_V2,
    ZCDP,
    AlertRule,
    Governance,
    Member,
    MemberBudget,
    Organization,
    OrgGrant,
    Policy,
    Purpose,
    zcdp_equivalents,
)
from gateway.policy.periods import LIFETIME, parse_period

__all__ = ["ALERT_RULES", "ROLES", "USE_CLASSES", "from_v1", "parse_governance"]

ROLES = ("consumer", "operator", "data_owner", "auditor")
USE_CLASSES = ("public_welfare", "commercial")
PRIVACY_DEFINITIONS = ("pure_dp", "approx_dp", "zcdp")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")

# rule -> {parameter: (kind, required)}
ALERT_RULES: dict[str, dict[str, tuple[str, bool]]] = {
    "grant_near_exhaustion": {"threshold": ("fraction", True)},
    "refusal_burst": {"count": ("int", True), "window_s": ("positive", True)},
    "near_identical_queries": {"count": ("int", True), "window_s": ("positive", True)},
    "unusual_spend_rate": {"factor": ("positive", True), "window_s": ("positive", False),
                           "baseline_days": ("positive", False)},
}


class _R:
    """Validation helpers bound to the file name."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.file, key, problem)

    def table(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, "must be a table")
        return value

    def keys(
        self, t: dict[str, Any], prefix: str, required: set[str], optional: Set[str] = frozenset()
    ) -> None:
        for k in sorted(t):
            if k not in required and k not in optional:
                allowed = ", ".join(sorted(required | set(optional)))
                raise self.fail(f"{prefix}{k}", f"unknown key (allowed: {allowed})")
        for k in sorted(required):
            if k not in t:
                raise self.fail(f"{prefix}{k}", "is required (no default)")

    def name(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not _NAME.match(value):
            raise self.fail(key, "must be a name of letters, digits, '.', '_' or '-' (at most 128 characters)")
        return value

    def text(self, value: Any, key: str, *, nonempty: bool = False) -> str:
        if not isinstance(value, str) or (nonempty and not value.strip()):
            raise self.fail(key, "must be a non-empty string" if nonempty else "must be a string")
        return value

    def number(self, value: Any, key: str, *, positive: bool = False, below_one: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"must be a number, got {type(value).__name__}")
        v = float(value)
        if not math.isfinite(v):
            raise self.fail(key, f"must be finite, got {value!r}")
        if v < 0:
            raise self.fail(key, f"must not be negative, got {value!r}")
        if positive and v == 0:
            raise self.fail(key, f"must be positive, got {value!r}")
        if below_one and v >= 1:
            raise self.fail(key, f"must be below 1, got {value!r}")
        return v


def parse_governance(data: dict[str, Any], file: str) -> Governance:
    """Validate a parsed TOML document as a v2 operator policy.

    Raises:
        ConfigError: names the file, the dotted key and the problem.
    """
    r = _R(file)
    r.keys(data, "", {"schema", "organizations", "purposes", "grants"}, {"alerts"})
    if data["schema"] != SCHEMA_V2:
        raise r.fail("schema", f"must be {SCHEMA_V2!r}, got {data['schema']!r}")
    organizations, members = _organizations(r, data["organizations"])
    purposes = _purposes(r, data["purposes"])
    grants = _grants(r, data["grants"], organizations, members, purposes)
    alerts = _alerts(r, data.get("alerts", []))
    return Governance(organizations, members, purposes, grants, alerts, file)


def _organizations(r: _R, raw: Any) -> tuple[dict[str, Organization], dict[str, Member]]:
    orgs_t = r.table(raw, "organizations")
    if not orgs_t:
        raise r.fail("organizations", "at least one organisation is required")
    organizations: dict[str, Organization] = {}
    members: dict[str, Member] = {}
    for oid, body in orgs_t.items():
        p = f"organizations.{oid}."
        r.name(oid, f"organizations.{oid}")
        body = r.table(body, f"organizations.{oid}")
        r.keys(body, p, {"name", "members"}, {"description", "datasets"})
        mem_t = r.table(body["members"], p + "members")
        if not mem_t:
            raise r.fail(p + "members", "at least one member is required")
        ids = []
        for ident, mbody in mem_t.items():
            mp = f"{p}members.{ident}."
            r.name(ident, f"{p}members.{ident}")
            if ident in members:
                raise r.fail(f"{p}members.{ident}", f"already a member of {members[ident].organization!r}")
            mbody = r.table(mbody, f"{p}members.{ident}")
            r.keys(mbody, mp, {"roles"}, {"description"})
            roles = mbody["roles"]
            if not isinstance(roles, list) or not roles or any(x not in ROLES for x in roles):
                raise r.fail(mp + "roles", f"must be a non-empty list of {', '.join(ROLES)}")
            if len(set(roles)) != len(roles):
                raise r.fail(mp + "roles", "must not repeat a role")
            members[ident] = Member(ident, oid, frozenset(roles))
            ids.append(ident)
        datasets = body.get("datasets", [])
        if not isinstance(datasets, list):
            raise r.fail(p + "datasets", "must be a list of dataset names")
        ds = tuple(r.name(d, f"{p}datasets[{i}]") for i, d in enumerate(datasets))
        if any("data_owner" in members[i].roles for i in ids) and not ds:
            raise r.fail(p + "datasets", "is required when a member has role 'data_owner'")
        organizations[oid] = Organization(
            oid, r.text(body["name"], p + "name", nonempty=True), tuple(ids), ds,
            r.text(body.get("description", ""), p + "description"),
        )
    return organizations, members


def _purposes(r: _R, raw: Any) -> dict[str, Purpose]:
    t = r.table(raw, "purposes")
    purposes: dict[str, Purpose] = {}
    for name, body in t.items():
        p = f"purposes.{name}."
        r.name(name, f"purposes.{name}")
        body = r.table(body, f"purposes.{name}")
        use = body.get("use_class")
        if use not in USE_CLASSES:
            r.keys(body, p, {"use_class"}, {"description", "currency", "price_per_request_unit",
                                           "price_per_epsilon"})
            raise r.fail(p + "use_class", f"must be one of {', '.join(USE_CLASSES)}, got {use!r}")
        if use == "commercial":
            r.keys(body, p, {"use_class", "currency", "price_per_request_unit", "price_per_epsilon"},
                   {"description"})
            currency = r.text(body["currency"], p + "currency")
            if not _CURRENCY.match(currency):
                raise r.fail(p + "currency", "must be an ISO 4217 code such as 'EUR'")
            unit = r.number(body["price_per_request_unit"], p + "price_per_request_unit")
            eps = r.number(body["price_per_epsilon"], p + "price_per_epsilon")
            purposes[name] = Purpose(name, use, currency, Decimal(repr(unit)), Decimal(repr(eps)),
                                     r.text(body.get("description", ""), p + "description"))
        else:
            r.keys(body, p, {"use_class"}, {"description"})  # public welfare is free: no prices
            purposes[name] = Purpose(name, use, description=r.text(body.get("description", ""),
                                                                    p + "description"))
    return purposes


def _grants(
    r: _R, raw: Any, orgs: dict[str, Organization], members: dict[str, Member], purposes: dict[str, Purpose]
) -> tuple[OrgGrant, ...]:
    if not isinstance(raw, list):
        raise r.fail("grants", "must be an array of tables ([[grants]])")
    out: list[OrgGrant] = []
    seen: set[tuple[str, str, str]] = set()
    for i, g in enumerate(raw):
        p = f"grants[{i}]."
        g = r.table(g, f"grants[{i}]")
        definition = g.get("privacy_definition")
        if not isinstance(definition, str) or definition not in PRIVACY_DEFINITIONS:
            r.keys({k: v for k, v in g.items() if k == "privacy_definition"}, p, {"privacy_definition"})
            raise r.fail(p + "privacy_definition",
                         f"must be one of {list(PRIVACY_DEFINITIONS)}, got {definition!r}")
        if definition == ZCDP:
            out.append(_zcdp_grant(r, p, i, g, orgs, members, purposes, seen))
            continue
        r.keys(g, p, {"organization", "dataset", "purpose", "privacy_definition", "epsilon", "delta",
                      "max_epsilon_per_query", "period"}, {"window_days", "members", "description"})
        org, purpose = _grant_scope(r, p, g, orgs, purposes)
        epsilon = r.number(g["epsilon"], p + "epsilon", positive=True)
        delta = r.number(g["delta"], p + "delta", below_one=True)
        max_q = r.number(g["max_epsilon_per_query"], p + "max_epsilon_per_query", positive=True)
        if max_q > epsilon:
            raise r.fail(p + "max_epsilon_per_query", "must not exceed epsilon")
        if definition == "pure_dp" and delta != 0:
            raise r.fail(p + "delta", "must be 0 for privacy_definition 'pure_dp'")
        if definition == "approx_dp" and delta <= 0:
            raise r.fail(p + "delta", "must be positive for privacy_definition 'approx_dp'")
        period = parse_period(r.file, p, g)
        mbs = [MemberBudget(ident, me, md)
               for ident, me, md in _member_budgets(r, p, g, org, members, "epsilon", epsilon, delta)]
        key = (org, r.name(g["dataset"], p + "dataset"), purpose)
        if key in seen:
            raise r.fail(f"grants[{i}]", f"duplicate grant for {key}")
        seen.add(key)
        out.append(OrgGrant(org, key[1], purpose, definition, epsilon, delta, max_q, period, tuple(mbs)))
    return tuple(out)


def _grant_scope(
    r: _R, p: str, g: dict[str, Any], orgs: dict[str, Organization], purposes: dict[str, Purpose]
) -> tuple[str, str]:
    """A grant's organisation and purpose, each declared in the policy."""
    org = r.name(g["organization"], p + "organization")
    if org not in orgs:
        raise r.fail(p + "organization", f"unknown organisation {org!r}")
    purpose = r.name(g["purpose"], p + "purpose")
    if purpose not in purposes:
        raise r.fail(p + "purpose", f"undeclared purpose {purpose!r} (declare it under [purposes])")
    return org, purpose


def _member_budgets(
    r: _R, p: str, g: dict[str, Any], org: str, members: dict[str, Member], measure: str, org_amount: float,
    org_delta: float,
) -> list[tuple[str, float, float]]:
    """A grant's `members` table: (identity, amount in `measure`, delta) for each consumer member of `org`,
    each within the organisation's amount and delta (zCDP members need a positive delta, like their grant)."""
    out = []
    for ident, mb in r.table(g.get("members", {}), p + "members").items():
        mp = f"{p}members.{ident}."
        m = members.get(ident)
        if m is None or m.organization != org:
            raise r.fail(f"{p}members.{ident}", f"is not a member of organisation {org!r}")
        if "consumer" not in m.roles:
            raise r.fail(f"{p}members.{ident}", "has no role 'consumer'")
        mb = r.table(mb, f"{p}members.{ident}")
        r.keys(mb, mp, {measure, "delta"})
        amount = r.number(mb[measure], mp + measure, positive=True)
        md = r.number(mb["delta"], mp + "delta", below_one=True)
        if amount > org_amount:
            raise r.fail(mp + measure, f"must not exceed the organisation's {measure} {org_amount!r}")
        if md > org_delta:
            raise r.fail(mp + "delta", f"must not exceed the organisation's delta {org_delta!r}")
        if measure == "rho" and md <= 0:
            raise r.fail(mp + "delta", "must be positive for privacy_definition 'zcdp'")
        out.append((ident, amount, md))
    return out


def _zcdp_grant(
    r: _R, p: str, i: int, g: dict[str, Any], orgs: dict[str, Organization], members: dict[str, Member],
    purposes: dict[str, Purpose], seen: set[tuple[str, str, str]],
) -> OrgGrant:
    """One zCDP grant: rho, delta (> 0: the delta spending is reported at), max_rho_per_query, period."""
    r.keys(g, p, {"organization", "dataset", "purpose", "privacy_definition", "rho", "delta",
                  "max_rho_per_query", "period"}, {"window_days", "members", "description"})
    org, purpose = _grant_scope(r, p, g, orgs, purposes)
    rho = r.number(g["rho"], p + "rho", positive=True)
    delta = r.number(g["delta"], p + "delta", below_one=True)
    if delta <= 0:
        raise r.fail(p + "delta", "must be positive for privacy_definition 'zcdp' "
                                  "(spending is reported as (epsilon, delta) at this delta)")
    max_rho = r.number(g["max_rho_per_query"], p + "max_rho_per_query", positive=True)
    if max_rho > rho:
        raise r.fail(p + "max_rho_per_query", "must not exceed rho")
    period = parse_period(r.file, p, g)
    mbs = [MemberBudget(ident, 0.0, md, mr)
           for ident, mr, md in _member_budgets(r, p, g, org, members, "rho", rho, delta)]
    key = (org, r.name(g["dataset"], p + "dataset"), purpose)
    if key in seen:
        raise r.fail(f"grants[{i}]", f"duplicate grant for {key}")
    seen.add(key)
    return zcdp_equivalents(OrgGrant(org, key[1], purpose, ZCDP, 0.0, delta, 0.0, period, tuple(mbs),
                                      rho=rho, max_rho_per_query=max_rho))


def _alerts(r: _R, raw: Any) -> tuple[AlertRule, ...]:
    if not isinstance(raw, list):
        raise r.fail("alerts", "must be an array of tables ([[alerts]])")
    out = []
    for i, a in enumerate(raw):
        p = f"alerts[{i}]."
        a = r.table(a, f"alerts[{i}]")
        rule = a.get("rule")
        if rule not in ALERT_RULES:
            raise r.fail(p + "rule", f"must be one of {', '.join(ALERT_RULES)}, got {rule!r}")
        spec = ALERT_RULES[rule]
        r.keys(a, p, {"rule"} | {k for k, (_, req) in spec.items() if req},
               {k for k, (_, req) in spec.items() if not req})
        params = []
        for k, (kind, _req) in spec.items():
            if k not in a:
                continue
            v = r.number(a[k], p + k, positive=True)
            if kind == "int" and (isinstance(a[k], float) or v < 1):
                raise r.fail(p + k, "must be a positive integer")
            if kind == "fraction" and v > 1:
                raise r.fail(p + k, "must be in (0, 1]")
            params.append((k, v))
        out.append(AlertRule(str(rule), tuple(params)))
    return tuple(out)


def from_v1(policy: Policy) -> Governance:
    """The v2 view of a v1 policy: one organisation per consumer, lifetime periods, free purposes."""
    organizations = {
        c.identity: Organization(c.identity, c.organization, (c.identity,), (), c.description)
        for c in policy.consumers.values()
    }
    members = {c: Member(c, c, frozenset({"consumer"})) for c in policy.consumers}
    purposes = {g.purpose: Purpose(g.purpose, "public_welfare") for g in policy.grants}
    grants = tuple(
        OrgGrant(g.consumer, g.dataset, g.purpose, g.privacy_definition, g.epsilon, g.delta,
                 g.max_epsilon_per_query, LIFETIME, rho=g.rho, max_rho_per_query=g.max_rho_per_query)
        for g in policy.grants
    )
    return Governance(organizations, members, purposes, grants, (), policy.source,
                      schema="privacy_gateway.operator.v1")
