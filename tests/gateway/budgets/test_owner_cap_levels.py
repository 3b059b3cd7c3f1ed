"""The data owner's cap levels in the gateway's ledger (rho caps, lifetime caps, the grant-switch case, the
schema migration) and in the sandbox's own cap ledger for every product (models and verification included)."""

from __future__ import annotations

import sqlite3
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.budgets.governor import Governor, OwnerCap
from gateway.budgets.ledger import _CAP_COLUMNS, GrantKey, Ledger, PrivacyLoss, Reservation
from gateway.errors import OwnerCapIncompatibleError, PrivacyBudgetExhaustedError
from gateway.policy.periods import DELTA_UNITS, EPSILON_UNITS, RHO_UNITS, Period, to_units
from gateway.policy.policy import parse_policy
from gateway.settings import ROOT
from gateway.storage.state import StateStore
from sandbox.client import SandboxClient, SandboxProcess
from sandbox.errors import CAP_LIFETIME_MESSAGE, CAP_MESSAGE, DUPLICATE_MESSAGE, INCOMPATIBLE_PREFIX
from sandbox.pricing import zcdp
from sandbox.pricing.cap_rules import pure_to_rho_units
from sandbox.protocol.messages import (
    Aggregate,
    AggregateKind,
    Column,
    ErrorReply,
    ExecuteRequest,
    ExecuteResult,
    GroupKey,
    QueryPlan,
)
from sandbox.protocol.models import EvaluateRequest, EvaluateResult, TrainRequest, TrainResult
from sandbox.protocol.owner import CapUsageReply
from sandbox.protocol.verification import VerifyClaimsRequest, VerifyClaimsResult
from tests.gateway.budgets.test_owner_caps import catalog_text
from tests.gateway.budgets.test_zcdp_budgets import PURE_V2
from tests.gateway.policy.test_policy_zcdp import V2
from tests.helpers import Env

NOW = 1_750_000_000.0
MONTH = Period("calendar", "month")
KEY = GrantKey("analyst", "registry", "research")


def _governor(tmp_path: Path, text: str, cap: OwnerCap | None = None) -> Governor:
    policy = parse_policy(tomllib.loads(text), "op.toml")
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    return Governor(tmp_path / "op.toml", policy, ledger, StateStore(ledger.path),
                    {"registry": cap} if cap is not None else {}, {"registry": "Bureau"})


def _zcost(rho: float, selection: float = 0.0, grant_delta: float = 1e-6) -> PrivacyLoss:
    """A zCDP charge as the query path builds it: epsilon at the grant's delta less the selection delta."""
    return PrivacyLoss(zcdp.to_approx_dp(rho, selection, grant_delta)[0], selection, rho, grant_delta - selection)


def _charge(gv: Governor, rid: str, cost: PrivacyLoss, key: GrantKey = KEY) -> Reservation:
    out = gv.reserve(key, request_id=rid, fingerprint="fp-" + rid, cost=cost, request_units=1, now=NOW)
    assert isinstance(out, Reservation)
    return out


def test_zcdp_charges_count_their_delta_after_a_switch_to_an_epsilon_grant(tmp_path: Path) -> None:
    """A charge made while the grant was zcdp is (epsilon at delta_c, delta_c + delta_s)-DP: after the
    operator switches the grant to approx_dp (delta budget 1e-6), its epsilon level counts that whole delta, so
    an approximate-DP charge no longer fits while a pure one does; on a pure_dp grant (delta 0) the earlier
    zCDP charge leaves no room at all (a pure guarantee cannot absorb an approximate one)."""
    z = _governor(tmp_path, V2)
    _charge(z, "z1", _zcost(0.01, selection=2e-7))
    with z.ledger._connection() as conn:  # type: ignore[attr-defined]
        (conv,) = conn.execute("SELECT conversion_delta_units FROM charges").fetchone()
    assert conv == to_units(1e-6 - 2e-7, DELTA_UNITS, up=True)
    approx = _governor(tmp_path, PURE_V2)
    status = approx.budget_status(KEY, now=NOW)
    assert status.spent.delta == pytest.approx(1e-6, rel=1e-9)  # 2e-7 selection + 8e-7 conversion
    with pytest.raises(PrivacyBudgetExhaustedError) as info:
        _charge(approx, "a1", PrivacyLoss(0.1, 1e-8))
    assert info.value.metadata["level"] == "organization" and "delta" in info.value.message
    _charge(approx, "p1", PrivacyLoss(0.1))
    pure = _governor(tmp_path, PURE_V2.replace('privacy_definition = "approx_dp"', 'privacy_definition = "pure_dp"')
                     .replace("delta = 1e-6", "delta = 0.0"))
    with pytest.raises(PrivacyBudgetExhaustedError) as info:
        _charge(pure, "p2", PrivacyLoss(0.1))
    assert "delta" in info.value.message


def test_owner_epsilon_cap_converts_at_the_owners_delta_not_the_grants(tmp_path: Path) -> None:
    """The same zCDP charge on grants of delta 1e-6 and 0.5 counts the same on the owner's epsilon cap: the
    epsilon of its rho at the owner's conversion_delta 1e-7, and delta 1e-7 + its selection delta."""
    cap = OwnerCap("epsilon", 100.0, 1e-5, MONTH, conversion_delta=1e-7)
    gv = _governor(tmp_path, V2, cap)
    _charge(gv, "c1", _zcost(0.02, 1e-8))
    _charge(gv, "c2", _zcost(0.02, 1e-8, grant_delta=0.5))
    sums = gv.ledger.owner_sums("registry", None, None)
    one = to_units(zcdp.rho_to_epsilon(0.02, 1e-7), EPSILON_UNITS, up=True)
    assert (sums.epsilon_units, sums.delta_units) == (2 * one, 2 * (to_units(1e-7, DELTA_UNITS, up=True)
                                                                     + to_units(1e-8, DELTA_UNITS, up=True)))
    assert (sums.rho_units, sums.rho_delta_units) == (2 * to_units(0.02, RHO_UNITS, up=True),
                                                      2 * to_units(1e-8, DELTA_UNITS, up=True))
    # remaining rho under the cap: the largest rho whose epsilon at 1e-7 fits what is left
    status = gv.budget_status(KEY, now=NOW)
    assert status.remaining.rho <= 0.5 - 0.04 + 1e-12


def test_rho_cap_refuses_approximate_dp_before_charging_and_lifetime_binds(tmp_path: Path) -> None:
    """On a rho cap an (epsilon, delta > 0) release is refused (FAILED_PRECONDITION) with nothing written, a
    pure one counts epsilon^2 / 2, and a lifetime cap is a level of its own in the same transaction."""
    cap = OwnerCap("rho", 1.0, 1e-6, MONTH, lifetime_amount=0.08, lifetime_delta=1e-6)
    gv = _governor(tmp_path, PURE_V2, cap)
    with pytest.raises(OwnerCapIncompatibleError) as info:
        _charge(gv, "a1", PrivacyLoss(0.1, 1e-8))
    assert info.value.metadata["capMeasure"] == "rho" and info.value.reason == "OWNER_CAP_INCOMPATIBLE"
    assert gv.ledger.owner_sums("registry", None, None).rho_units == 0
    _charge(gv, "p1", PrivacyLoss(0.3))  # rho 0.045
    _charge(gv, "p2", PrivacyLoss(0.25))  # rho 0.03125: 0.07625 of the lifetime 0.08
    with pytest.raises(PrivacyBudgetExhaustedError) as info:
        _charge(gv, "p3", PrivacyLoss(0.1))  # 0.005 more does not fit the lifetime cap
    assert info.value.metadata["level"] == "dataset_cap_lifetime" and "lifetime" in info.value.message
    expected = pure_to_rho_units(to_units(0.3, EPSILON_UNITS, up=True)) + pure_to_rho_units(
        to_units(0.25, EPSILON_UNITS, up=True))
    assert gv.ledger.owner_sums("registry", None, None).rho_units == expected
    levels = {lv.limit.level: lv for lv in gv.levels(KEY, now=NOW)}
    assert levels["dataset_cap_lifetime"].spent_rho == expected
    assert gv.budget_status(KEY, now=NOW).limiting_level == "dataset_cap_lifetime"


def test_ledger_schema_4_is_migrated_with_the_old_counts(tmp_path: Path) -> None:
    """A schema-4 ledger gains conversion_delta_units and the owner's-cap columns: each earlier charge counts
    as the old rule counted it (epsilon, delta; rho as a grant's rho level does), buckets rebuilt."""
    gv = _governor(tmp_path, PURE_V2)
    _charge(gv, "p", PrivacyLoss(0.5))
    _charge(gv, "a", PrivacyLoss(0.1, 1e-8))
    gv.ledger.close()
    path = tmp_path / "ledger.sqlite3"
    con = sqlite3.connect(path, isolation_level=None)
    for t in ("charges_buckets_insert", "charges_buckets_delete", "charges_buckets_update"):
        con.execute(f"DROP TRIGGER {t}")
    con.execute("DROP TABLE spend_buckets")
    for c in ("conversion_delta_units", *_CAP_COLUMNS):
        con.execute(f"ALTER TABLE charges DROP COLUMN {c}")
    con.execute("PRAGMA user_version = 4")
    con.close()
    ledger = Ledger(path)
    ledger.verify_buckets()
    with ledger._connection() as conn:
        rows = conn.execute(f"SELECT request_id, {', '.join(_CAP_COLUMNS)} FROM charges ORDER BY request_id").fetchall()
    assert rows == [("a", 10**8, 10**10, 0, 0, 0, 1),
                    ("p", 5 * 10**8, 0, pure_to_rho_units(5 * 10**8), 0, 0, 0)]
    ledger.close()


# -- the sandbox's own cap ledger, every product --------------------------------------------------------


@pytest.fixture(scope="module")
def rho_sandbox(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxClient]:
    """A sandbox process whose owner caps the registry at rho 1.0 per month (delta 1e-6), rho 0.8 lifetime."""
    root = tmp_path_factory.mktemp("rhocap")
    catalog = root / "catalog.toml"
    catalog.write_text(catalog_text('rho_per_period = 1.0\ndelta_per_period = 1e-6\nperiod = "month"\n'
                                    'lifetime_rho = 0.8\nlifetime_delta = 1e-6'))
    sock_dir = Path(tempfile.mkdtemp(prefix="pgw-rc-"))
    proc = SandboxProcess.start(catalog, sock_dir / "s.sock", env.data_dir, ["--state-dir", str(root / "owner")])
    yield proc.client()
    proc.stop()


def _usage_rho(c: SandboxClient) -> int:
    reply = c.cap_usage(("registry",))
    assert isinstance(reply, CapUsageReply)
    return reply.usages[0].period.rho_units


@pytest.mark.integration
def test_sandbox_charges_models_on_the_owners_cap_and_never_runs_an_id_twice(rho_sandbox: SandboxClient) -> None:
    """Training and evaluation are charged on the owner's rho cap before touching data (linear and evaluation
    as epsilon^2 / 2, logistic regression as the composed rho of its Gaussian releases), every request id
    once across products; past the cap a model request is refused and not run."""
    c = rho_sandbox
    before = _usage_rho(c)
    lin = c.call(TrainRequest("a/m1", "registry", "residents", "linear", ("birth_year",), "income", 0.5), 120)
    assert isinstance(lin, TrainResult)
    assert c.call(TrainRequest("a/m1", "registry", "residents", "linear", ("birth_year",), "income", 0.5),
                  120) == ErrorReply("rejected", DUPLICATE_MESSAGE)
    assert c.call(EvaluateRequest("a/m1", "registry", "residents", "linear", (("birth_year", 1.0),), 0.0, "income",
                                  0.5), 120) == ErrorReply("rejected", DUPLICATE_MESSAGE)
    ev = c.call(EvaluateRequest("a/e1", "registry", "residents", "linear", (("birth_year", 1.0),), 0.0, "income",
                                0.4), 120)
    assert isinstance(ev, EvaluateResult)
    log = c.call(TrainRequest("a/m2", "registry", "residents", "logistic", ("birth_year",), "employed", 1.0, 1e-6,
                              2), 120)
    assert isinstance(log, TrainResult)
    composed = next(x.rho for x in log.costs if x.component == "composition")

    def pure(costs: tuple[object, ...]) -> int:
        total = sum(x.epsilon for x in costs)  # type: ignore[attr-defined]
        return pure_to_rho_units(to_units(total, EPSILON_UNITS, up=True))

    expected = pure(lin.costs) + pure(ev.costs) + to_units(composed, RHO_UNITS, up=True)
    assert _usage_rho(c) - before == expected
    big = c.call(TrainRequest("a/m3", "registry", "residents", "logistic", ("birth_year",), "employed", 8.0, 1e-6,
                              2), 120)
    assert big == ErrorReply("rejected", CAP_MESSAGE)
    assert _usage_rho(c) - before == expected  # nothing charged, nothing run


@pytest.mark.integration
def test_sandbox_refuses_what_a_rho_cap_cannot_count_and_binds_its_lifetime(rho_sandbox: SandboxClient) -> None:
    """Partition selection under approximate DP (epsilon, delta > 0) has no zCDP count: the sandbox refuses it
    itself; zCDP queries count their exact rho until the lifetime cap (0.8, below the period's 1.0) binds."""
    c = rho_sandbox
    keyed = QueryPlan("registry", "residents", (Aggregate(AggregateKind.COUNT),), (),
                      group_by=(GroupKey("birth_year", Column("birth_year"), None),))
    r = c.execute(ExecuteRequest("b/1", keyed, 1.0, 1e-7), timeout_s=60)
    assert isinstance(r, ErrorReply) and r.message.startswith(INCOMPATIBLE_PREFIX) and "rho" in r.message
    count = QueryPlan("registry", "residents", (Aggregate(AggregateKind.COUNT),), ())
    spent = _usage_rho(c)
    first = c.execute(ExecuteRequest("b/z0", count, 0.0, rho=0.1), timeout_s=60)
    assert isinstance(first, ExecuteResult)
    each = to_units(first.costs[0].rho, RHO_UNITS, up=True)
    fits = (8 * 10**8 - spent - each) // each  # more releases the lifetime cap holds, exactly
    replies = [c.execute(ExecuteRequest(f"b/z{i + 1}", count, 0.0, rho=0.1), timeout_s=60) for i in range(fits + 2)]
    assert all(isinstance(x, ExecuteResult) for x in replies[:fits])
    assert replies[fits:] == [ErrorReply("rejected", CAP_LIFETIME_MESSAGE)] * 2
    reply = c.cap_usage(("registry",))
    assert isinstance(reply, CapUsageReply)
    assert reply.usages[0].lifetime.rho_units == spent + (fits + 1) * each <= 8 * 10**8
    assert reply.usages[0].period.rho_units == reply.usages[0].lifetime.rho_units  # all in this month


@pytest.mark.integration
def test_sandbox_records_verification_requests_once(rho_sandbox: SandboxClient, env: Env) -> None:
    """A verification request id is recorded (no privacy loss) and a repeat is refused, never evaluated."""
    import duckdb

    (subject, name), = duckdb.connect().execute(
        f"SELECT id_number, name FROM read_parquet('{env.data_dir}/residents.parquet') LIMIT 1").fetchall()
    req = VerifyClaimsRequest("v/1", "registry", "identity_match", (subject,), (("name", (name,)),))
    first = rho_sandbox.call(req, 60)
    assert isinstance(first, VerifyClaimsResult) and first.outcomes == (1,) and first.capped == ()
    assert rho_sandbox.call(req, 60) == ErrorReply("rejected", DUPLICATE_MESSAGE)


def test_shipped_catalog_caps_load() -> None:
    """The shipped example states its caps in the owner's terms (and loads)."""
    from sandbox.catalog import load_catalog

    cat = load_catalog(ROOT / "policies" / "catalog.toml")
    reg = cat.dataset("registry")
    assert reg is not None and reg.cap is not None
    assert (reg.cap.measure, reg.cap.conversion_delta, reg.cap.lifetime_amount) == ("epsilon", 1e-7, 10000.0)
    assert reg.subject_cap("income_at_least") is not None
