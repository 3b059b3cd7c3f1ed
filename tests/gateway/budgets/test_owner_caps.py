"""The data owner's caps end to end: a real gateway, its real sandbox process, generated stubs, mTLS.

Each test starts its own gateway (under a second with the small test data), so the caps' ledgers start empty,
and changes the owner's catalog by rewriting the file and reloading (AdminService.ReloadPolicy), which also
exercises the reload path in both processes.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from privacy_gateway.v1 import admin_service_pb2 as a_pb
from privacy_gateway.v1 import budget_service_pb2 as b_pb
from privacy_gateway.v1 import budget_service_pb2_grpc as b_grpc
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import model_service_pb2 as m_pb
from privacy_gateway.v1 import model_service_pb2_grpc as m_grpc
from privacy_gateway.v1 import query_service_pb2 as q_pb
from privacy_gateway.v1 import query_service_pb2_grpc as q_grpc
from privacy_gateway.v1 import verification_service_pb2 as v_pb
from privacy_gateway.v1 import verification_service_pb2_grpc as v_grpc

from gateway.identity import certs
from gateway.policy.periods import DELTA_UNITS, EPSILON_UNITS, RHO_UNITS, from_units, to_units
from gateway.rpc.server import Gateway, start_gateway
from gateway.settings import ROOT
from sandbox.client import SandboxClient
from sandbox.errors import INCOMPATIBLE_PREFIX
from sandbox.pricing import zcdp
from sandbox.pricing.cap_rules import pure_to_rho_units
from sandbox.protocol.messages import Aggregate, AggregateKind, ErrorReply, ExecuteRequest, QueryPlan
from tests.gov_helpers import admin, channel, distinct_count_sql, fails
from tests.helpers import Env

pytestmark = pytest.mark.integration

POLICY = """
schema = "privacy_gateway.operator.v2"

[organizations.bank]
name = "Bank"
[organizations.bank.members.analyst]
roles = ["consumer"]

[organizations.temps]
name = "Temporary Staff"
[organizations.temps.members.temp1]
roles = ["consumer"]

[organizations.ops]
name = "Ops"
[organizations.ops.members.ops-admin]
roles = ["operator"]

[organizations.bureau]
name = "Bureau"
datasets = ["registry"]
[organizations.bureau.members.steward]
roles = ["data_owner"]

[purposes.research]
use_class = "public_welfare"
[purposes.credit]
use_class = "public_welfare"
[purposes.kyc]
use_class = "public_welfare"
[purposes.modeling]
use_class = "public_welfare"

[[grants]]
organization = "bank"
dataset = "registry"
purpose = "research"
privacy_definition = "zcdp"
rho = 10.0
delta = 0.9                     # an operator's delta: it must not matter to the owner's cap
max_rho_per_query = 0.2
period = "month"

[[grants]]
organization = "bank"
dataset = "registry"
purpose = "credit"
privacy_definition = "pure_dp"
epsilon = 100.0
delta = 0.0
max_epsilon_per_query = 5.0
period = "month"

[[grants]]
organization = "bank"
dataset = "registry"
purpose = "modeling"
privacy_definition = "approx_dp"
epsilon = 100.0
delta = 1e-5
max_epsilon_per_query = 10.0
period = "month"

[[model_grants]]
consumer = "analyst"
dataset = "registry"
purpose = "modeling"
table = "residents"
features = ["birth_year", "income"]
labels = ["income", "employed"]
max_epsilon_per_request = 10.0

[[verification_grants]]
consumer = "analyst"
dataset = "registry"
template = "identity_match"
purpose = "kyc"
max_checks_per_period = 1000
max_checks_per_subject_per_period = 1000

[[verification_grants]]
consumer = "temp1"
dataset = "registry"
template = "identity_match"
purpose = "kyc"
max_checks_per_period = 1000
max_checks_per_subject_per_period = 1000
"""
IDENTITIES = ["analyst", "temp1", "ops-admin", "steward"]
BASE_CATALOG = (ROOT / "policies" / "catalog.toml").read_text()
_CAPS = re.compile(r"(?ms)^\[datasets\.registry\.caps\]\n.*?(?=^# The owner's per-subject)")
COUNT = QueryPlan("registry", "residents", (Aggregate(AggregateKind.COUNT),), ())


def catalog_text(caps: str, subject_cap: int = 1000, base: str = BASE_CATALOG) -> str:
    """The shipped catalog with the registry's [caps] body replaced and the per-subject default changed."""
    text = _CAPS.sub(lambda _: f"[datasets.registry.caps]\n{caps}\n\n", base)
    return text.replace("period = \"day\"\nmax_checks_per_subject_per_period = 1000",
                        f"period = \"day\"\nmax_checks_per_subject_per_period = {subject_cap}")


@dataclass
class OwnerGateway:
    """A running gateway whose catalog file the test rewrites."""

    gw: Gateway
    tls: Path
    catalog: Path
    socket: Path

    def ch(self, name: str) -> grpc.Channel:
        return channel(self.tls, self.gw.port, name)

    def set_catalog(self, text: str) -> a_pb.ReloadPolicyResponse:
        """Write the catalog file and reload (as the operator)."""
        self.catalog.write_text(text)
        with self.ch("ops-admin") as ch:
            resp: a_pb.ReloadPolicyResponse = admin(ch).ReloadPolicy(a_pb.ReloadPolicyRequest())
        return resp

    def usage(self, who: str = "steward", dataset: str = "registry") -> a_pb.DatasetCapUsage:
        with self.ch(who) as ch:
            resp = admin(ch).GetCapUsage(a_pb.GetCapUsageRequest(dataset=dataset))
        [d] = resp.datasets
        return d


@pytest.fixture
def owner_gw(env: Env) -> Iterator[OwnerGateway]:
    """A fresh gateway and sandbox with the test policy and a writable copy of the shipped catalog."""
    root = Path(tempfile.mkdtemp(prefix="pgw-oc-"))
    tls = root / "tls"
    certs.write_dev_pki(tls, clients=IDENTITIES)
    (root / "operator.toml").write_text(POLICY)
    catalog = root / "catalog.toml"
    catalog.write_text(BASE_CATALOG)
    state = root / "state"
    gw = start_gateway(replace(env.settings, policy=root / "operator.toml", catalog=catalog, state_dir=state,
                               tls_dir=tls, sandbox_socket=state / "sandbox.sock"))
    yield OwnerGateway(gw, tls, catalog, state / "sandbox.sock")
    gw.stop()
    shutil.rmtree(root, ignore_errors=True)


def zquery(ch: grpc.Channel, rho: float) -> q_pb.RunQueryResponse:
    """A zCDP COUNT (distinct SQL each time, so the release cache never answers it)."""
    resp: q_pb.RunQueryResponse = q_grpc.QueryServiceStub(ch).RunQuery(q_pb.RunQueryRequest(
        dataset="registry", sql=distinct_count_sql(), purpose="research",
        privacy_loss=common_pb.PrivacyLoss(rho=rho)), timeout=60)
    return resp


def pquery(ch: grpc.Channel, epsilon: float) -> q_pb.RunQueryResponse:
    """A pure-DP COUNT on the credit grant."""
    resp: q_pb.RunQueryResponse = q_grpc.QueryServiceStub(ch).RunQuery(q_pb.RunQueryRequest(
        dataset="registry", sql=distinct_count_sql(), purpose="credit",
        privacy_loss=common_pb.PrivacyLoss(epsilon=epsilon)), timeout=60)
    return resp


def eps_units(x: float) -> int:
    return to_units(x, EPSILON_UNITS, up=True)


def test_zcdp_releases_count_at_the_owners_conversion_delta_never_the_grants(owner_gw: OwnerGateway) -> None:
    """The reproduction: a zcdp grant with delta 0.9 and an owner's cap of (epsilon 1, delta 0). Twelve
    queries of rho 0.15 used to be answered as epsilon 0.0 each; now every one is refused before anything is
    charged (no conversion_delta: the owner's cap cannot count a zCDP release), by the gateway and by the
    sandbox itself. Once the owner states conversion_delta 1e-6 and a delta budget, each release counts
    exactly (OpenDP's epsilon of its rho at 1e-6, delta 1e-6) in both ledgers, and the cap binds."""
    g = owner_gw
    assert g.set_catalog(catalog_text('epsilon_per_period = 1.0\ndelta_per_period = 0.0\nperiod = "month"')
                         ).owner_settings_reloaded
    with g.ch("analyst") as ch:
        for _ in range(12):
            err = fails(zquery, ch, 0.15)
            assert (err.code, err.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "OWNER_CAP_INCOMPATIBLE")
            assert "conversion_delta" in err.message and err.metadata["capMeasure"] == "epsilon"
        status = b_grpc.BudgetServiceStub(ch).GetPrivacyBudget(b_pb.GetPrivacyBudgetRequest()).grants
        assert [s.spent.rho for s in status if s.purpose == "research"] == [0.0]
    u = g.usage()
    assert u.sandbox.period_spent == u.gateway.period_spent == a_pb.CapAmount()
    # a gateway that skipped its check gets the same refusal from the sandbox, which charges nothing
    direct = SandboxClient(g.socket).execute(ExecuteRequest("rogue/1", COUNT, 0.0, rho=0.15), timeout_s=60)
    assert isinstance(direct, ErrorReply) and direct.message.startswith(INCOMPATIBLE_PREFIX)
    assert g.usage().sandbox.period_spent == a_pb.CapAmount()

    caps = 'epsilon_per_period = 7.0\ndelta_per_period = 1e-5\nperiod = "month"\nconversion_delta = 1e-6'
    assert g.set_catalog(catalog_text(caps)).owner_settings_reloaded
    with g.ch("analyst") as ch:
        answered = [zquery(ch, 0.15), zquery(ch, 0.15)]
        err = fails(zquery, ch, 0.15)
    rho = answered[0].privacy_cost.rho
    assert 0.14 < rho <= 0.15 and answered[1].privacy_cost.rho == rho
    per = zcdp.rho_to_epsilon(rho, 1e-6)  # about 2.67: two fit in 7, a third does not
    assert (err.code, err.metadata["level"]) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "dataset_cap")
    u = g.usage()
    for side in (u.sandbox, u.gateway):
        assert side.period_spent.epsilon == from_units(2 * eps_units(per), EPSILON_UNITS)
        assert side.period_spent.delta == from_units(2 * to_units(1e-6, DELTA_UNITS, up=True), DELTA_UNITS)
        assert side.period_remaining.epsilon == pytest.approx(7.0 - 2 * per, abs=1e-8)
    assert u.measure == "epsilon" and u.conversion_delta == 1e-6 and u.period == "month"
    # the grant's own report is still at the grant's delta (the operator's business, not the owner's)
    assert answered[0].privacy_cost.delta == 0.9


def test_rho_cap_counts_rho_and_pure_releases_as_half_epsilon_squared(owner_gw: OwnerGateway) -> None:
    """An owner's rho cap of 0.5: three zCDP releases of rho ~0.15 fit, a fourth does not; a pure release of
    epsilon e counts e^2 / 2 (0.3 -> 0.045 fits, 0.4 -> 0.08 does not); both ledgers count the same exact
    nano-rho. Then a lifetime cap binds at level dataset_cap_lifetime."""
    g = owner_gw
    assert g.set_catalog(catalog_text('rho_per_period = 0.5\ndelta_per_period = 0.0\nperiod = "month"')
                         ).owner_settings_reloaded
    with g.ch("analyst") as ch:
        rhos = [zquery(ch, 0.15).privacy_cost.rho for _ in range(3)]
        err = fails(zquery, ch, 0.15)
        assert (err.code, err.metadata["level"]) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "dataset_cap")
        assert "requestedRho" in err.metadata
        pure = pquery(ch, 0.3).privacy_cost.epsilon
        err = fails(pquery, ch, 0.4)
        assert err.metadata["level"] == "dataset_cap"
    expected = sum(to_units(r, RHO_UNITS, up=True) for r in rhos) + pure_to_rho_units(eps_units(pure))
    u = g.usage()
    assert u.measure == "rho" and u.per_period.rho == 0.5
    for side in (u.sandbox, u.gateway):
        assert side.period_spent.rho == from_units(expected, RHO_UNITS)
        assert side.period_spent.delta == 0.0 and not side.period_uncounted
    caps = ('rho_per_period = 10.0\ndelta_per_period = 0.0\nperiod = "month"\n'
            f'lifetime_rho = {from_units(expected, RHO_UNITS) + 0.1!r}\nlifetime_delta = 0.0')
    assert g.set_catalog(catalog_text(caps)).owner_settings_reloaded
    with g.ch("analyst") as ch:
        err = fails(zquery, ch, 0.15)
    assert (err.code, err.metadata["level"]) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "dataset_cap_lifetime")
    assert "lifetime" in err.message
    u = g.usage()
    assert u.lifetime.rho == pytest.approx(from_units(expected, RHO_UNITS) + 0.1)
    assert u.sandbox.lifetime_remaining.rho == pytest.approx(0.1, abs=1e-9)


def test_models_count_on_an_owner_rho_cap_in_their_own_definition(owner_gw: OwnerGateway) -> None:
    """Model requests walk the governed path to the owner's cap too: a logistic fit (accounted in zCDP, charged
    to an approx_dp grant as (epsilon, delta)) counts its composed rho, a linear fit (pure DP) epsilon^2 / 2,
    exactly, in both ledgers; a model past the cap is refused with nothing charged."""
    g = owner_gw
    assert g.set_catalog(catalog_text('rho_per_period = 0.5\ndelta_per_period = 0.0\nperiod = "month"')
                         ).owner_settings_reloaded
    base = {"dataset": "registry", "purpose": "modeling", "table": "residents", "features": ["birth_year"]}
    with g.ch("analyst") as ch:
        stub = m_grpc.ModelServiceStub(ch)
        logistic = stub.TrainModel(m_pb.TrainModelRequest(
            **base, label="employed", kind=m_pb.MODEL_KIND_LOGISTIC, iterations=2,
            privacy_loss=common_pb.PrivacyLoss(epsilon=1.0, delta=1e-6)))
        linear = stub.TrainModel(m_pb.TrainModelRequest(
            **base, label="income", kind=m_pb.MODEL_KIND_LINEAR, privacy_loss=common_pb.PrivacyLoss(epsilon=0.5)))
        err = fails(stub.TrainModel, m_pb.TrainModelRequest(
            **base, label="employed", kind=m_pb.MODEL_KIND_LOGISTIC, iterations=2,
            privacy_loss=common_pb.PrivacyLoss(epsilon=10.0, delta=1e-6)))
    assert (err.code, err.metadata["level"]) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "dataset_cap")
    composed = next(r for r in logistic.releases if r.component == "composition")
    assert composed.privacy_loss.delta == 1e-6 and composed.rho > 0
    expected = (to_units(composed.rho, RHO_UNITS, up=True)
                + pure_to_rho_units(eps_units(linear.privacy_cost.epsilon)))
    u = g.usage()
    for side in (u.sandbox, u.gateway):
        assert side.period_spent.rho == from_units(expected, RHO_UNITS) and side.period_spent.delta == 0.0


def test_owner_subject_cap_counts_checks_of_all_consumers(owner_gw: OwnerGateway, env: Env) -> None:
    """The owner caps checks of one subject at 3 per day across ALL consumers (each consumer's own cap is
    1000): analyst checks twice and temp1 once, temp1's next check is refused (cap owner_subject); in a batch
    the capped subject's claim is CAP_EXHAUSTED while the other claims are answered."""
    import duckdb

    g = owner_gw
    assert g.set_catalog(catalog_text('epsilon_per_period = 100.0\ndelta_per_period = 0.0\nperiod = "month"',
                                      subject_cap=3)).owner_settings_reloaded
    (x, x_name), (y, y_name) = duckdb.connect().execute(
        f"SELECT id_number, name FROM read_parquet('{env.data_dir}/residents.parquet') ORDER BY person_id LIMIT 2"
    ).fetchall()

    def check(ch: grpc.Channel, subject: str, name: str) -> v_pb.VerifyResponse:
        resp: v_pb.VerifyResponse = v_grpc.VerificationServiceStub(ch).Verify(v_pb.VerifyRequest(
            dataset="registry", template="identity_match", purpose="kyc", subject=subject,
            parameters={"name": v_pb.ParamValue(string_value=name)}))
        return resp

    with g.ch("analyst") as a, g.ch("temp1") as t:
        assert check(a, x, x_name).result == v_pb.VERIFICATION_RESULT_MATCH
        assert check(a, x, "Someone Else").result == v_pb.VERIFICATION_RESULT_NO_MATCH
        assert check(t, x, x_name).result == v_pb.VERIFICATION_RESULT_MATCH
        err = fails(check, t, x, x_name)
        assert (err.code, err.reason, err.metadata["cap"]) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED, "VERIFICATION_CAP_EXHAUSTED", "owner_subject")
        claims = [v_pb.Claim(subject=s, parameters={"name": v_pb.ParamValue(string_value=n)})
                  for s, n in ((y, y_name), (x, x_name), (y, y_name))]
        results = [r for resp in v_grpc.VerificationServiceStub(a).VerifyBatch(iter([v_pb.VerifyBatchRequest(
            dataset="registry", template="identity_match", purpose="kyc", claims=claims)])) for r in resp.results]
    assert [r.status for r in results] == [v_pb.CLAIM_STATUS_OK, v_pb.CLAIM_STATUS_CAP_EXHAUSTED,
                                           v_pb.CLAIM_STATUS_OK]
    assert results[0].result == results[2].result == v_pb.VERIFICATION_RESULT_MATCH
    assert "data owner's cap" in results[1].status_message and not results[1].HasField("receipt")
    assert results[2].receipt.tree_size == 2  # the answered claims share one signed tree


def test_reload_changes_caps_and_grades_in_both_processes_or_nothing(owner_gw: OwnerGateway) -> None:
    """A reload applies the owner's new grade rules and caps in the gateway and the sandbox at once, without
    a restart; a catalog whose data-defining part changed is refused and nothing changes anywhere."""
    g = owner_gw
    grouped = "SELECT region, COUNT(*) FROM residents GROUP BY region"
    with g.ch("analyst") as ch:
        q_grpc.QueryServiceStub(ch).RunQuery(q_pb.RunQueryRequest(
            dataset="registry", sql=grouped, purpose="credit", privacy_loss=common_pb.PrivacyLoss(epsilon=0.1)))
    strict = catalog_text('epsilon_per_period = 3.0\ndelta_per_period = 0.0\nperiod = "day"').replace(
        '[grades.internal]\nallows = ["group_key", "filter", "aggregate_input"]',
        '[grades.internal]\nallows = ["filter", "aggregate_input"]')
    resp = g.set_catalog(strict)
    assert resp.owner_settings_reloaded and resp.grants == 3
    with g.ch("analyst") as ch:
        err = fails(q_grpc.QueryServiceStub(ch).RunQuery, q_pb.RunQueryRequest(
            dataset="registry", sql=grouped, purpose="credit", privacy_loss=common_pb.PrivacyLoss(epsilon=0.1)))
        assert (err.code, err.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "GRADE_NOT_ALLOWED")
    # the sandbox applies the same rule to a plan sent straight to it
    from sandbox.protocol.messages import Column, GroupKey

    info = g.gw.core.catalog.dataset("registry")
    assert info is not None and info.caps is not None and info.caps.amount == 3.0
    region = next(c for c in info.tables[0].columns if c.name == "region")
    region_plan = QueryPlan("registry", "residents", (Aggregate(AggregateKind.COUNT),), (),
                            group_by=(GroupKey("region", Column("region"), region.domain),))
    direct = SandboxClient(g.socket).execute(ExecuteRequest("rogue/2", region_plan, 0.1), timeout_s=60)
    assert isinstance(direct, ErrorReply) and "group_key" in direct.message
    assert g.usage().period == "day" and g.usage().per_period.epsilon == 3.0
    # a data-defining change (a bound) is refused: both processes keep the settings they had
    changed = strict.replace("lower = 0, upper = 2000000", "lower = 0, upper = 3000000")
    resp = g.set_catalog(changed)
    assert not resp.owner_settings_reloaded
    assert "datasets.registry.tables.residents.columns.income.upper" in resp.owner_settings_message
    assert "restart" in resp.owner_settings_message
    u = g.usage()
    assert (u.period, u.per_period.epsilon) == ("day", 3.0)
    assert g.gw.core.grade_rules["internal"] == frozenset({"filter", "aggregate_input"})


def test_cap_usage_is_for_data_owners_and_operators(owner_gw: OwnerGateway) -> None:
    """A data owner sees its own datasets' caps, an operator every dataset's; a consumer is refused, and a
    data owner asking for another owner's dataset too."""
    g = owner_gw
    with g.ch("analyst") as ch:
        pquery(ch, 0.5)
        err = fails(admin(ch).GetCapUsage, a_pb.GetCapUsageRequest())
        assert (err.code, err.reason) == (grpc.StatusCode.PERMISSION_DENIED, "ROLE_REQUIRED")
    with g.ch("steward") as ch:
        mine = admin(ch).GetCapUsage(a_pb.GetCapUsageRequest())
        err = fails(admin(ch).GetCapUsage, a_pb.GetCapUsageRequest(dataset="enterprises"))
        assert err.code == grpc.StatusCode.PERMISSION_DENIED
    assert [d.dataset for d in mine.datasets] == ["registry"]
    [d] = mine.datasets
    assert d.capped and d.measure == "epsilon" and d.per_period.epsilon == 1000.0 and d.lifetime.epsilon == 10000.0
    assert d.sandbox.available and d.sandbox.period_spent.epsilon == d.gateway.period_spent.epsilon
    assert d.sandbox.period_spent.epsilon == pytest.approx(0.5, abs=1e-9)
    assert d.sandbox.period_remaining.epsilon == pytest.approx(999.5, abs=1e-9)
    assert d.period_start.endswith("-01T00:00:00Z") and d.owner == "Provincial Big Data Bureau"
    grades = {(c.table, c.column): c.grade for c in d.columns}  # every column with the owner's grade
    assert grades[("residents", "person_id")] == "identifier" and len(grades) == len(d.columns) > 5
    rules = {r.grade: list(r.uses) for r in mine.grade_rules}
    assert rules["identifier"] == [] and "group_key" not in rules["sensitive"] and rules["public"]
    with g.ch("ops-admin") as ch:
        every = admin(ch).GetCapUsage(a_pb.GetCapUsageRequest())
    assert [d.dataset for d in every.datasets] == ["registry", "enterprises"]
    assert every.datasets[1].period == "rolling 30d" and every.datasets[1].conversion_delta == 1e-8


def test_pgw_admin_caps_prints_a_table_and_json(owner_gw: OwnerGateway, capsys: pytest.CaptureFixture[str]) -> None:
    """`pgw admin caps` as the data owner: one row per ledger, and the same as JSON."""
    import json

    from gateway.cli.main import main

    g = owner_gw
    base = ["admin", "caps", "--target", f"127.0.0.1:{g.gw.port}", "--tls-dir", str(g.tls), "--as", "steward"]
    assert main(base) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("registry")]
    assert len(rows) == 2 and "1000 delta 0.0001 per month" in rows[0]
    assert "sandbox" in rows[0] and "gateway" in rows[1] and "enterprises" not in out
    assert main([*base, "--json"]) == 0
    data: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert data["datasets"][0]["dataset"] == "registry" and data["datasets"][0]["sandbox"]["available"]
