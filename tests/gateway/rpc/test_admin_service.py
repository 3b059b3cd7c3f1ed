"""AdminService, revocation, reload and nested budgets through a real gateway and generated stubs."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from privacy_gateway.v1 import admin_service_pb2 as a_pb
from privacy_gateway.v1 import budget_service_pb2 as b_pb
from privacy_gateway.v1 import budget_service_pb2_grpc as b_grpc

from gateway.budgets.alerts import alerts_total
from gateway.identity import certs
from gateway.rpc.server import Gateway, start_gateway
from tests.gov_helpers import IDENTITIES, POLICY_V2, admin, channel, fails, query
from tests.helpers import Env

pytestmark = pytest.mark.integration


class GovGateway:
    """A running v2 gateway with its policy file and certificates."""

    def __init__(self, gw: Gateway, policy: Path, tls: Path) -> None:
        self.gw, self.policy, self.tls = gw, policy, tls

    def ch(self, name: str) -> grpc.Channel:
        return channel(self.tls, self.gw.port, name)


@pytest.fixture(scope="module")
def gov(env: Env) -> Iterator[GovGateway]:
    """A gateway with the v2 test policy, its own state directory and its own sandbox."""
    root = Path(tempfile.mkdtemp(prefix="pgw-gov-"))
    tls = root / "tls"
    certs.write_dev_pki(tls, clients=IDENTITIES)
    policy = root / "operator.toml"
    policy.write_text(POLICY_V2)
    state = root / "state"
    gw = start_gateway(replace(env.settings, policy=policy, state_dir=state, tls_dir=tls,
                               sandbox_socket=state / "sandbox.sock"))
    yield GovGateway(gw, policy, tls)
    gw.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_admin_rpcs_refuse_non_operators(gov: GovGateway) -> None:
    """Consumers and data owners get PERMISSION_DENIED from operator RPCs; a certificate whose name is in no
    policy gets UNAUTHENTICATED (as on every RPC)."""
    with gov.ch("outsider") as ch:
        err = fails(admin(ch).ListOrganizations, a_pb.ListOrganizationsRequest())
        assert (err.code, err.reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNKNOWN_IDENTITY")
    for name in ("analyst", "steward"):
        with gov.ch(name) as ch:
            for rpc, req in ((admin(ch).ListOrganizations, a_pb.ListOrganizationsRequest()),
                             (admin(ch).ReloadPolicy, a_pb.ReloadPolicyRequest()),
                             (admin(ch).GetUsage, a_pb.GetUsageRequest()),
                             (admin(ch).RevokeMember, a_pb.RevokeMemberRequest(identity="analyst"))):
                err = fails(rpc, req)
                assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_REQUIRED"), name
    with gov.ch("analyst") as ch:
        err = fails(admin(ch).ListDatasetSpending, a_pb.ListDatasetSpendingRequest())
        assert err.code == grpc.StatusCode.PERMISSION_DENIED
    with gov.ch("ops-admin") as ch:
        orgs = admin(ch).ListOrganizations(a_pb.ListOrganizationsRequest()).organizations
        assert {o.id for o in orgs} == {"bank", "temps", "ops", "bureau"}


def test_nested_budget_refusal_names_the_level(gov: GovGateway) -> None:
    """intern (own budget 1.0 in bank's 3.0) is refused at level member; the status shows the period."""
    with gov.ch("intern") as ch:
        query(ch, 0.5, "credit")
        query(ch, 0.5, "credit")
        err = fails(query, ch, 0.5, "credit")
        assert (err.code, err.reason, err.metadata["level"]) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED, "PRIVACY_BUDGET_EXHAUSTED", "member")
        status = b_grpc.BudgetServiceStub(ch).GetPrivacyBudget(b_pb.GetPrivacyBudgetRequest()).grants[0]
        assert status.period == "month" and status.period_start.endswith("-01T00:00:00Z")
        assert status.refreshes_at == status.period_end and status.organization == "bank"
        assert status.remaining.epsilon == 0.0 and status.limiting_level == "member"
    with gov.ch("analyst") as ch:
        query(ch, 1.0, "credit")
        query(ch, 0.75, "credit")
        err = fails(query, ch, 0.5, "credit")
        assert err.metadata["level"] == "organization"
        query(ch, 0.25, "credit")  # exactly the rest of the organisation's 3.0
    with gov.ch("ops-admin") as ch:
        orgs = {o.id: o for o in admin(ch).ListOrganizations(a_pb.ListOrganizationsRequest()).organizations}
        g = orgs["bank"].grants[0]
        assert g.budget.spent.epsilon == 3.0 and g.budget.remaining.epsilon == 0.0
        assert [(m.member, m.spent.epsilon) for m in g.members] == [("intern", 1.0)]
        usage = json.loads(admin(ch).GetUsage(a_pb.GetUsageRequest()).json)
        bank = [r for r in usage["rows"] if r["organization"] == "bank"]
        assert sum(r["requests"] for r in bank) == 5
        # 5 requests x 1 release x 0.5 + 3.0 epsilon x 20 = 62.50
        assert usage["totals"]["EUR"] == "62.50"
        adjusted = admin(ch).AdjustGrant(a_pb.AdjustGrantRequest(
            organization="bank", dataset="registry", purpose="credit", epsilon=4.0))
        assert adjusted.grant.adjusted and adjusted.grant.budget.remaining.epsilon == 1.0
        err = fails(admin(ch).AdjustGrant, a_pb.AdjustGrantRequest(
            organization="bank", dataset="registry", purpose="credit", epsilon=0.5))
        assert err.reason == "INVALID_ADJUSTMENT"  # below intern's own 1.0
    with gov.ch("analyst") as ch:
        query(ch, 1.0, "credit")  # the adjustment applies to the next request
    with gov.ch("steward") as ch:
        entries = admin(ch).ListDatasetSpending(a_pb.ListDatasetSpendingRequest(dataset="registry")).entries
        outcomes = [(e.member, e.outcome) for e in entries if e.organization == "bank"]
        assert outcomes.count(("intern", "refused")) == 1 and outcomes.count(("analyst", "charged")) == 4


def test_revocation_applies_to_the_next_request(gov: GovGateway) -> None:
    """A revoked member, then its whole organisation, is refused with reason REVOKED."""
    with gov.ch("temp1") as t1, gov.ch("temp2") as t2, gov.ch("ops-admin") as ops:
        query(t1, 0.1, "work")
        admin(ops).RevokeMember(a_pb.RevokeMemberRequest(identity="temp1", reason="left"))
        err = fails(query, t1, 0.1, "work")
        assert (err.code, err.reason, err.metadata["level"]) == (
            grpc.StatusCode.PERMISSION_DENIED, "REVOKED", "member")
        query(t2, 0.1, "work")
        admin(ops).RevokeOrganization(a_pb.RevokeOrganizationRequest(organization="temps"))
        err = fails(query, t2, 0.1, "work")
        assert (err.reason, err.metadata["level"]) == ("REVOKED", "organization")
        orgs = {o.id: o for o in admin(ops).ListOrganizations(a_pb.ListOrganizationsRequest()).organizations}
        assert orgs["temps"].revoked and all(m.revoked for m in orgs["temps"].members)


def test_reload_with_a_broken_file_changes_nothing(gov: GovGateway) -> None:
    """ReloadPolicy on a broken file returns file/key/problem and keeps the running policy."""
    good = gov.policy.read_text()
    with gov.ch("ops-admin") as ops:
        gov.policy.write_text(good.replace("epsilon = 100.0", "epsilon = -1.0"))
        err = fails(admin(ops).ReloadPolicy, a_pb.ReloadPolicyRequest())
        assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "POLICY_INVALID")
        assert err.metadata["file"] == str(gov.policy) and err.metadata["key"] == "grants[1].epsilon"
        assert "negative" in err.metadata["problem"]
        orgs = {o.id: o for o in admin(ops).ListOrganizations(a_pb.ListOrganizationsRequest()).organizations}
        assert orgs["temps"].grants[0].budget.budget.epsilon == 100.0
        gov.policy.write_text(good.replace("epsilon = 100.0", "epsilon = 50.0"))
        resp = admin(ops).ReloadPolicy(a_pb.ReloadPolicyRequest())
        assert resp.schema == "privacy_gateway.operator.v2" and resp.grants == 2
        orgs = {o.id: o for o in admin(ops).ListOrganizations(a_pb.ListOrganizationsRequest()).organizations}
        assert orgs["temps"].grants[0].budget.budget.epsilon == 50.0
    gov.policy.write_text(good)


def test_refusal_burst_alert_fires_and_is_recorded(gov: GovGateway) -> None:
    """Three refused queries within a minute from one identity fire `refusal_burst` (policy: count 3)."""
    before = dict(alerts_total()).get("refusal_burst", 0)
    with gov.ch("intern") as ch:  # (the temps organisation is revoked by an earlier test)
        for _ in range(3):
            fails(query, ch, 0.1, "credit", sql="SELECT * FROM residents")
    assert gov.gw.governor is not None
    fired = [a for a in gov.gw.governor.state.alerts() if a[1] == "refusal_burst" and a[2] == "intern"]
    assert len(fired) == 1 and "3 refusals" in fired[0][3]
    assert alerts_total().get("refusal_burst", 0) == before + 1
