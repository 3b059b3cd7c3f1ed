"""Every RPC of every service passes the governance layer: enumerated from the proto descriptors, through the
real server (mTLS, real sandbox process, real ledger and audit log).

For each method: a certificate of the CA whose name is in no policy gets UNAUTHENTICATED; a revoked member
gets PERMISSION_DENIED (REVOKED); an identity without the grant or role gets PERMISSION_DENIED (or, for a
listing, sees nothing); for products, a grant removed from the policy file and reloaded gets
PERMISSION_DENIED, and a budget or cap that cannot pay gets RESOURCE_EXHAUSTED with nothing charged; and
every call, refusals included, writes exactly one audit entry. A method added to `proto/` without a case
here (and an access rule in gateway/rpc/methods.py) fails this test.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from privacy_gateway.v1 import admin_service_pb2 as a_pb
from privacy_gateway.v1 import admin_service_pb2_grpc as a_grpc
from privacy_gateway.v1 import audit_service_pb2 as au_pb
from privacy_gateway.v1 import audit_service_pb2_grpc as au_grpc
from privacy_gateway.v1 import budget_service_pb2 as b_pb
from privacy_gateway.v1 import budget_service_pb2_grpc as b_grpc
from privacy_gateway.v1 import catalog_service_pb2 as cat_pb
from privacy_gateway.v1 import catalog_service_pb2_grpc as cat_grpc
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import model_service_pb2 as m_pb
from privacy_gateway.v1 import model_service_pb2_grpc as m_grpc
from privacy_gateway.v1 import query_service_pb2 as q_pb
from privacy_gateway.v1 import query_service_pb2_grpc as q_grpc
from privacy_gateway.v1 import receipt_pb2
from privacy_gateway.v1 import receipt_pb2_grpc as key_grpc
from privacy_gateway.v1 import verification_service_pb2 as v_pb
from privacy_gateway.v1 import verification_service_pb2_grpc as v_grpc

from gateway.budgets.ledger import GrantKey
from gateway.cli.client import error_details
from gateway.identity import certs
from gateway.rpc.methods import RULES, proto_methods
from gateway.rpc.server import Gateway, start_gateway
from tests.helpers import Env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

_MEMBERS = """
[organizations.bank]
name = "Bank"
[organizations.bank.members.analyst]
roles = ["consumer"]
[organizations.bank.members.gone]
roles = ["consumer"]
[organizations.small]
name = "Small"
[organizations.small.members.small1]
roles = ["consumer"]
[organizations.loners]
name = "Loners"
[organizations.loners.members.loner]
roles = ["consumer"]
[organizations.temps]
name = "Temps"
[organizations.temps.members.temp1]
roles = ["consumer"]
[organizations.ops]
name = "Ops"
[organizations.ops.members.ops-admin]
roles = ["operator"]
[organizations.ops.members.gone-ops]
roles = ["operator"]
[organizations.bureau]
name = "Bureau"
datasets = ["registry"]
[organizations.bureau.members.steward]
roles = ["data_owner"]
[organizations.bureau.members.gone-steward]
roles = ["data_owner"]
[organizations.audit]
name = "Audit"
[organizations.audit.members.auditor]
roles = ["auditor"]
[organizations.audit.members.gone-auditor]
roles = ["auditor"]

[purposes.credit]
use_class = "commercial"
currency = "EUR"
price_per_request_unit = 0.5
price_per_epsilon = 20.0
[purposes.kyc]
use_class = "public_welfare"
"""


def _grants(*, analyst: bool) -> str:
    """The grants; without `analyst`, bank's grant and analyst's model and verification grants are gone."""
    bank = """
[[grants]]
organization = "bank"
dataset = "registry"
purpose = "credit"
privacy_definition = "pure_dp"
epsilon = 1000.0
delta = 0.0
max_epsilon_per_query = 10.0
period = "month"
""" if analyst else ""
    models = "".join(f"""
[[model_grants]]
consumer = "{who}"
dataset = "registry"
purpose = "credit"
table = "residents"
features = ["birth_year", "employed"]
labels = ["income"]
max_epsilon_per_request = 10.0
""" for who in (["analyst", "gone"] if analyst else []) + ["small1"])
    verification = "".join(f"""
[[verification_grants]]
consumer = "{who}"
dataset = "registry"
template = "identity_match"
purpose = "kyc"
max_checks_per_period = 1000
max_checks_per_subject_per_period = {cap}
""" for who, cap in ([("analyst", 100), ("gone", 100)] if analyst else []) + [("small1", 1)])
    return bank + """
[[grants]]
organization = "small"
dataset = "registry"
purpose = "credit"
privacy_definition = "pure_dp"
epsilon = 1.0
delta = 0.0
max_epsilon_per_query = 1.0
period = "month"
""" + models + verification


def policy_text(*, analyst: bool = True) -> str:
    """The operator policy of this test."""
    return 'schema = "privacy_gateway.operator.v2"\n' + _MEMBERS + _grants(analyst=analyst)


IDENTITIES = ["analyst", "gone", "small1", "loner", "temp1", "ops-admin", "gone-ops", "steward", "gone-steward",
              "auditor", "gone-auditor"]


@dataclass
class Gov:
    gw: Gateway
    tls: Path
    policy: Path
    subject: str
    name: str
    receipt_of: str = ""  # a released query of analyst's (GetMyReceipt)

    def channel(self, who: str) -> grpc.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=(self.tls / "ca.crt").read_bytes(),
            private_key=(self.tls / f"{who}.key").read_bytes(),
            certificate_chain=(self.tls / f"{who}.crt").read_bytes())
        return grpc.secure_channel(f"127.0.0.1:{self.gw.port}", creds)

    def audit_size(self) -> int:
        assert self.gw.oversight is not None
        return len(self.gw.oversight.audit.entries())

    def reload(self, *, analyst: bool) -> None:
        self.policy.write_text(policy_text(analyst=analyst))
        with self.channel("ops-admin") as ch:
            a_grpc.AdminServiceStub(ch).ReloadPolicy(a_pb.ReloadPolicyRequest(), timeout=30)


@pytest.fixture(scope="module")
def gov(env: Env) -> Iterator[Gov]:
    root = Path(tempfile.mkdtemp(prefix="pgw-gov-"))
    tls = root / "tls"
    certs.write_dev_pki(tls, clients=[*IDENTITIES, "outsider"])  # outsider: our CA, in no policy
    policy = root / "operator.toml"
    policy.write_text(policy_text())
    state = root / "state"
    gw = start_gateway(dataclasses.replace(env.settings, policy=policy, state_dir=state, tls_dir=tls,
                                           sandbox_socket=state / "sandbox.sock"))
    subject, name = duckdb.connect().execute(
        f"SELECT id_number, name FROM read_parquet('{env.data_dir}/residents.parquet') LIMIT 1").fetchone()
    g = Gov(gw, tls, policy, subject, name)
    with g.channel("ops-admin") as ch:
        stub = a_grpc.AdminServiceStub(ch)
        for who in ("gone", "gone-ops", "gone-steward", "gone-auditor"):
            stub.RevokeMember(a_pb.RevokeMemberRequest(identity=who, reason="test"), timeout=30)
    with g.channel("analyst") as ch:
        g.receipt_of = q_grpc.QueryServiceStub(ch).RunQuery(_query(g), timeout=60).request_id
    yield g
    gw.stop()
    shutil.rmtree(root, ignore_errors=True)


# -- one valid call per method, made by `call(channel, gov)` ----------------------------------------------

def _loss(eps: float) -> common_pb.PrivacyLoss:
    return common_pb.PrivacyLoss(epsilon=eps)


def _query(g: Gov, eps: float = 0.1) -> q_pb.RunQueryRequest:
    return q_pb.RunQueryRequest(dataset="registry", purpose="credit", privacy_loss=_loss(eps),
                                sql=f"SELECT COUNT(*) FROM residents WHERE birth_year > {uuid.uuid4().int % 1000}",
                                request_id=uuid.uuid4().hex)


def _train(eps: float = 0.1) -> m_pb.TrainModelRequest:
    return m_pb.TrainModelRequest(dataset="registry", purpose="credit", table="residents",
                                  features=["birth_year", "employed"], label="income",
                                  kind=m_pb.MODEL_KIND_LINEAR, privacy_loss=_loss(eps), request_id=uuid.uuid4().hex)


def _evaluate(eps: float = 0.1) -> m_pb.EvaluateModelRequest:
    return m_pb.EvaluateModelRequest(
        dataset="registry", purpose="credit", table="residents", kind=m_pb.MODEL_KIND_LINEAR,
        coefficients=[m_pb.Coefficient(term="birth_year", value=1.0)], intercept=0.0, label="income",
        residual_bound=1e6, privacy_loss=_loss(eps), request_id=uuid.uuid4().hex)


def _verify(g: Gov) -> v_pb.VerifyRequest:
    return v_pb.VerifyRequest(dataset="registry", template="identity_match", purpose="kyc", subject=g.subject,
                              parameters={"name": v_pb.ParamValue(string_value=g.name)})


def _batch(g: Gov) -> v_pb.VerifyBatchRequest:
    return v_pb.VerifyBatchRequest(dataset="registry", template="identity_match", purpose="kyc", claims=[
        v_pb.Claim(subject=g.subject, parameters={"name": v_pb.ParamValue(string_value=g.name)})])


Call = Callable[[grpc.Channel, Gov], Any]

CALLS: dict[tuple[str, str], Call] = {
    ("QueryService", "RunQuery"): lambda ch, g: q_grpc.QueryServiceStub(ch).RunQuery(_query(g), timeout=60),
    ("QueryService", "ExplainQuery"): lambda ch, g: q_grpc.QueryServiceStub(ch).ExplainQuery(q_pb.ExplainQueryRequest(
        dataset="registry", purpose="credit", sql="SELECT COUNT(*) FROM residents", privacy_loss=_loss(0.1)),
        timeout=60),
    ("CatalogService", "ListDatasets"): lambda ch, g: cat_grpc.CatalogServiceStub(ch).ListDatasets(
        cat_pb.ListDatasetsRequest(), timeout=60),
    ("CatalogService", "GetDataset"): lambda ch, g: cat_grpc.CatalogServiceStub(ch).GetDataset(
        cat_pb.GetDatasetRequest(name="registry"), timeout=60),
    ("BudgetService", "GetPrivacyBudget"): lambda ch, g: b_grpc.BudgetServiceStub(ch).GetPrivacyBudget(
        b_pb.GetPrivacyBudgetRequest(), timeout=60),
    ("KeyService", "GetPublicKey"): lambda ch, g: key_grpc.KeyServiceStub(ch).GetPublicKey(
        receipt_pb2.GetPublicKeyRequest(), timeout=60),
    ("VerificationService", "ListTemplates"): lambda ch, g: v_grpc.VerificationServiceStub(ch).ListTemplates(
        v_pb.ListTemplatesRequest(), timeout=60),
    ("VerificationService", "Verify"): lambda ch, g: v_grpc.VerificationServiceStub(ch).Verify(_verify(g), timeout=60),
    ("VerificationService", "VerifyBatch"): lambda ch, g: list(
        v_grpc.VerificationServiceStub(ch).VerifyBatch(iter([_batch(g)]), timeout=60)),
    ("ModelService", "TrainModel"): lambda ch, g: m_grpc.ModelServiceStub(ch).TrainModel(_train(), timeout=60),
    ("ModelService", "EvaluateModel"): lambda ch, g: m_grpc.ModelServiceStub(ch).EvaluateModel(_evaluate(), timeout=60),
    ("AdminService", "ListOrganizations"): lambda ch, g: a_grpc.AdminServiceStub(ch).ListOrganizations(
        a_pb.ListOrganizationsRequest(), timeout=60),
    ("AdminService", "AdjustGrant"): lambda ch, g: a_grpc.AdminServiceStub(ch).AdjustGrant(a_pb.AdjustGrantRequest(
        organization="bank", dataset="registry", purpose="credit", max_epsilon_per_query=10.0), timeout=60),
    ("AdminService", "RevokeMember"): lambda ch, g: a_grpc.AdminServiceStub(ch).RevokeMember(
        a_pb.RevokeMemberRequest(identity="gone", reason="again"), timeout=60),
    ("AdminService", "RevokeOrganization"): lambda ch, g: a_grpc.AdminServiceStub(ch).RevokeOrganization(
        a_pb.RevokeOrganizationRequest(organization="temps", reason="test"), timeout=60),
    ("AdminService", "ReloadPolicy"): lambda ch, g: a_grpc.AdminServiceStub(ch).ReloadPolicy(
        a_pb.ReloadPolicyRequest(), timeout=60),
    ("AdminService", "GetUsage"): lambda ch, g: a_grpc.AdminServiceStub(ch).GetUsage(
        a_pb.GetUsageRequest(), timeout=60),
    ("AdminService", "ListDatasetSpending"): lambda ch, g: a_grpc.AdminServiceStub(ch).ListDatasetSpending(
        a_pb.ListDatasetSpendingRequest(dataset="registry"), timeout=60),
    ("AdminService", "GetCapUsage"): lambda ch, g: a_grpc.AdminServiceStub(ch).GetCapUsage(
        a_pb.GetCapUsageRequest(), timeout=60),
    ("AdminService", "ReinstateMember"): lambda ch, g: a_grpc.AdminServiceStub(ch).ReinstateMember(
        a_pb.ReinstateMemberRequest(identity="temp1", reason="test"), timeout=60),
    ("AdminService", "ReinstateOrganization"): lambda ch, g: a_grpc.AdminServiceStub(ch).ReinstateOrganization(
        a_pb.ReinstateOrganizationRequest(organization="loners", reason="test"), timeout=60),
    ("AdminService", "ListAlerts"): lambda ch, g: a_grpc.AdminServiceStub(ch).ListAlerts(
        a_pb.ListAlertsRequest(include_acknowledged=True), timeout=60),
    ("AdminService", "AcknowledgeAlert"): lambda ch, g: _acknowledge(ch, g),
    ("AuditService", "ListAuditEntries"): lambda ch, g: au_grpc.AuditServiceStub(ch).ListAuditEntries(
        au_pb.ListAuditEntriesRequest(page_size=5), timeout=60),
    ("AuditService", "VerifyAuditLog"): lambda ch, g: au_grpc.AuditServiceStub(ch).VerifyAuditLog(
        au_pb.VerifyAuditLogRequest(), timeout=60),
    ("AuditService", "ExportAuditLog"): lambda ch, g: au_grpc.AuditServiceStub(ch).ExportAuditLog(
        au_pb.ExportAuditLogRequest(max_entries=5), timeout=60),
    ("AuditService", "VerifyReceipt"): lambda ch, g: au_grpc.AuditServiceStub(ch).VerifyReceipt(
        au_pb.VerifyReceiptRequest(receipt_json='{"payload_json": "{}", "signature_b64": "", "key_id": "x"}'),
        timeout=60),
    ("AuditService", "ListMyRequests"): lambda ch, g: au_grpc.AuditServiceStub(ch).ListMyRequests(
        au_pb.ListMyRequestsRequest(), timeout=60),
    ("AuditService", "GetMyReceipt"): lambda ch, g: _my_receipt(ch, g),
    ("AuditService", "GetTransparencyReport"): lambda ch, g: au_grpc.AuditServiceStub(ch).GetTransparencyReport(
        au_pb.GetTransparencyReportRequest(), timeout=60),
}


def _acknowledge(ch: grpc.Channel, g: Gov) -> Any:
    """Acknowledge the newest alert (one is recorded first if the rules fired none)."""
    state = g.gw.governor.state if g.gw.governor is not None else None
    assert state is not None
    if not state.alert_rows(include_acknowledged=True, limit=1):
        state.record_alert("refusal_burst", "test", "recorded by the test", 0.0)
    (newest,) = state.alert_rows(include_acknowledged=True, limit=1)
    return a_grpc.AdminServiceStub(ch).AcknowledgeAlert(a_pb.AcknowledgeAlertRequest(id=newest.id), timeout=60)


def _my_receipt(ch: grpc.Channel, g: Gov) -> Any:
    """The receipt of analyst's query of the fixture (other callers are refused before the body runs)."""
    return au_grpc.AuditServiceStub(ch).GetMyReceipt(au_pb.GetMyReceiptRequest(request_id=g.receipt_of), timeout=60)

# who may call it, and the revoked member of the same role
CALLER = {"consumer": ("analyst", "gone"), "operator": ("ops-admin", "gone-ops"),
          "data_owner": ("steward", "gone-steward"), "auditor": ("auditor", "gone-auditor"), "": ("analyst", "gone")}
# Methods any certificate of the CA may call: answered for outsiders and revoked members alike, and audited
# only when refused (like the health check).
PUBLIC = [("AuditService", "GetTransparencyReport")]
# an identity that lacks the grant or the role: what it gets ("empty" = a listing without entries)
LACKING: dict[tuple[str, str], tuple[str, str]] = {
    ("QueryService", "RunQuery"): ("loner", "DATASET_ACCESS_DENIED"),
    ("QueryService", "ExplainQuery"): ("loner", "DATASET_ACCESS_DENIED"),
    ("CatalogService", "ListDatasets"): ("loner", "empty"),
    ("CatalogService", "GetDataset"): ("loner", "DATASET_ACCESS_DENIED"),
    ("BudgetService", "GetPrivacyBudget"): ("loner", "empty"),
    ("KeyService", "GetPublicKey"): ("", ""),  # any member may fetch the public key
    ("VerificationService", "ListTemplates"): ("loner", "empty"),
    ("VerificationService", "Verify"): ("loner", "VERIFICATION_ACCESS_DENIED"),
    ("VerificationService", "VerifyBatch"): ("loner", "VERIFICATION_ACCESS_DENIED"),
    ("ModelService", "TrainModel"): ("loner", "DATASET_ACCESS_DENIED"),
    ("ModelService", "EvaluateModel"): ("loner", "DATASET_ACCESS_DENIED"),
    **{("AdminService", m): ("analyst", "ROLE_REQUIRED") for m in (
        "ListOrganizations", "AdjustGrant", "RevokeMember", "RevokeOrganization", "ReloadPolicy", "GetUsage")},
    ("AdminService", "ListDatasetSpending"): ("ops-admin", "ROLE_REQUIRED"),
    ("AdminService", "GetCapUsage"): ("analyst", "ROLE_REQUIRED"),  # data owners and operators only
    **{("AdminService", m): ("analyst", "ROLE_REQUIRED") for m in (
        "ReinstateMember", "ReinstateOrganization", "ListAlerts", "AcknowledgeAlert")},
    ("AuditService", "ListAuditEntries"): ("ops-admin", "ROLE_REQUIRED"),  # auditors only
    ("AuditService", "VerifyAuditLog"): ("ops-admin", "ROLE_REQUIRED"),
    ("AuditService", "ExportAuditLog"): ("ops-admin", "ROLE_REQUIRED"),
    ("AuditService", "VerifyReceipt"): ("", ""),  # any member may verify a receipt
    ("AuditService", "ListMyRequests"): ("ops-admin", "ROLE_REQUIRED"),  # consumers: their own
    ("AuditService", "GetMyReceipt"): ("ops-admin", "ROLE_REQUIRED"),
    ("AuditService", "GetTransparencyReport"): ("", ""),  # public (see test_public_method_needs_no_membership)
}


def _fails(call: Call, ch: grpc.Channel, g: Gov) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(ch, g)
    d = error_details(info.value)
    return d.code, d.reason


def _role(service: str, method: str) -> str:
    rule = next(r for r in RULES.values() if (r.service, r.method) == (service, method))
    return next(iter(rule.roles)) if rule.roles else ""


METHODS = [(s, m) for s, m, _cs, _ss in proto_methods()]


def test_every_proto_method_has_a_case_and_a_rule() -> None:
    """A new RPC must come with an access rule and a case here (else the parametrised test cannot run it)."""
    for s, m in METHODS:
        assert (s, m) in CALLS and (s, m) in LACKING, f"add a governance case for {s}.{m}"
        assert any((r.service, r.method) == (s, m) for r in RULES.values()), f"add an access rule for {s}.{m}"


GOVERNED = [m for m in METHODS if m not in PUBLIC]


@pytest.mark.parametrize(("service", "method"), GOVERNED, ids=[f"{s}.{m}" for s, m in GOVERNED])
def test_method_is_governed(gov: Gov, service: str, method: str) -> None:
    """Unknown identity, revoked member, lacking identity, allowed identity: one audit entry each."""
    call = CALLS[(service, method)]
    allowed, revoked = CALLER[_role(service, method)]
    before = gov.audit_size()
    with gov.channel("outsider") as ch:
        assert _fails(call, ch, gov) == (grpc.StatusCode.UNAUTHENTICATED, "UNKNOWN_IDENTITY")
    assert gov.audit_size() == before + 1
    with gov.channel(revoked) as ch:
        assert _fails(call, ch, gov) == (grpc.StatusCode.PERMISSION_DENIED, "REVOKED")
    assert gov.audit_size() == before + 2
    lacking, reason = LACKING[(service, method)]
    n = 2
    if lacking:
        with gov.channel(lacking) as ch:
            if reason == "empty":
                resp = call(ch, gov)
                assert not list(getattr(resp, "datasets", getattr(resp, "grants", getattr(resp, "templates", [1]))))
            else:
                assert _fails(call, ch, gov) == (grpc.StatusCode.PERMISSION_DENIED, reason)
        n += 1
        assert gov.audit_size() == before + n
    with gov.channel(allowed) as ch:
        call(ch, gov)
    assert gov.audit_size() == before + n + 1


@pytest.mark.parametrize(("service", "method"), PUBLIC, ids=[f"{s}.{m}" for s, m in PUBLIC])
def test_public_method_needs_no_membership(gov: Gov, service: str, method: str) -> None:
    """Any certificate of the CA gets the public report (an outsider, a revoked member, a member), and the rule
    says so; answers are counted in the metrics, not audited."""
    (rule,) = [r for r in RULES.values() if (r.service, r.method) == (service, method)]
    assert rule.any_certificate
    before = gov.audit_size()
    for who in ("outsider", "gone", "analyst"):
        with gov.channel(who) as ch:
            report = CALLS[(service, method)](ch, gov)
        assert [d.name for d in report.datasets] == ["registry"]  # published in policies/catalog.toml
    assert gov.audit_size() == before


PRODUCTS = [("QueryService", "RunQuery"), ("VerificationService", "Verify"), ("VerificationService", "VerifyBatch"),
            ("ModelService", "TrainModel"), ("ModelService", "EvaluateModel")]


def test_every_product_method_is_a_product() -> None:
    """The methods that release something derived from data are exactly the products of the rules."""
    assert sorted(PRODUCTS) == sorted((r.service, r.method) for r in RULES.values() if r.product)


@pytest.mark.parametrize(("service", "method"), PRODUCTS, ids=[f"{s}.{m}" for s, m in PRODUCTS])
def test_removed_grant_is_refused_after_reload(gov: Gov, service: str, method: str) -> None:
    """The grant (query, model, verification) removed from the policy file and reloaded: PERMISSION_DENIED."""
    call = CALLS[(service, method)]
    with gov.channel("analyst") as ch:
        call(ch, gov)
        gov.reload(analyst=False)
        try:
            code, _reason = _fails(call, ch, gov)
            assert code == grpc.StatusCode.PERMISSION_DENIED
        finally:
            gov.reload(analyst=True)
        call(ch, gov)


def test_exhausted_budget_and_caps_refuse_without_charging(gov: Gov) -> None:
    """small1's grant is 1.0 per month: after 0.6, every product asking 0.6 is RESOURCE_EXHAUSTED and charges
    nothing; its verification cap is 1 check per subject: the second check is refused, and the batch's claim
    comes back CAP_EXHAUSTED; one audit entry per call."""
    key = GrantKey("small1", "registry", "credit")
    with gov.channel("small1") as ch:
        q_grpc.QueryServiceStub(ch).RunQuery(_query(gov, 0.6), timeout=60)
        spent = gov.gw.ledger.spent(key)
        assert spent.epsilon == pytest.approx(0.6)
        before = gov.audit_size()
        for call in (lambda: q_grpc.QueryServiceStub(ch).RunQuery(_query(gov, 0.6), timeout=60),
                     lambda: m_grpc.ModelServiceStub(ch).TrainModel(_train(0.6), timeout=60),
                     lambda: m_grpc.ModelServiceStub(ch).EvaluateModel(_evaluate(0.6), timeout=60)):
            with pytest.raises(grpc.RpcError) as info:
                call()
            d = error_details(info.value)
            assert (d.code, d.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "PRIVACY_BUDGET_EXHAUSTED")
        assert gov.gw.ledger.spent(key) == spent
        assert gov.audit_size() == before + 3
        stub = v_grpc.VerificationServiceStub(ch)
        stub.Verify(_verify(gov), timeout=60)
        code, reason = _fails(lambda c, g: stub.Verify(_verify(g), timeout=60), ch, gov)
        assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "VERIFICATION_CAP_EXHAUSTED")
        (resp,) = list(stub.VerifyBatch(iter([_batch(gov)]), timeout=60))
        assert [r.status for r in resp.results] == [v_pb.CLAIM_STATUS_CAP_EXHAUSTED]
        assert gov.audit_size() == before + 6


def test_reflection_and_health(gov: Gov) -> None:
    """Reflection only for operators (consumers PERMISSION_DENIED, unknown names UNAUTHENTICATED); health for
    any certificate of the CA, SERVING while the sandbox is up."""
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    for who, code in (("outsider", grpc.StatusCode.UNAUTHENTICATED), ("analyst", grpc.StatusCode.PERMISSION_DENIED)):
        with gov.channel(who) as ch, pytest.raises(grpc.RpcError) as info:
            list(reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(iter([request]), timeout=30))
        assert info.value.code() == code
    with gov.channel("ops-admin") as ch:
        (resp,) = list(reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo(iter([request]), timeout=30))
        assert "privacy_gateway.v1.AdminService" in {s.name for s in resp.list_services_response.service}
    for who in ("outsider", "analyst"):
        with gov.channel(who) as ch:
            status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
            assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_model_spending_is_metered_with_its_organisation_and_price(gov: Gov) -> None:
    """A model release on a commercial purpose shows in the usage report with its organisation and price, and
    in the member's budget (the same grant as queries)."""
    with gov.channel("analyst") as ch:
        before = b_grpc.BudgetServiceStub(ch).GetPrivacyBudget(b_pb.GetPrivacyBudgetRequest(), timeout=60)
        resp = m_grpc.ModelServiceStub(ch).TrainModel(_train(0.5), timeout=60)
        after = b_grpc.BudgetServiceStub(ch).GetPrivacyBudget(b_pb.GetPrivacyBudgetRequest(), timeout=60)
    assert resp.receipt.signature and resp.budget.organization == "bank"
    (b0,) = [g for g in before.grants if g.purpose == "credit"]
    (b1,) = [g for g in after.grants if g.purpose == "credit"]
    assert b1.spent.epsilon == pytest.approx(b0.spent.epsilon + 0.5)
    rows = [r for r in gov.gw.ledger.charges_between(None, None) if r["request_id"] == resp.request_id]
    assert len(rows) == 1 and rows[0]["organization"] == "bank" and rows[0]["use_class"] == "commercial"
    assert rows[0]["price_per_epsilon"] == "20.0"
