"""The sandbox enforces the data owner's cap and column grades itself, whatever the gateway says."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.settings import ROOT
from sandbox.client import SandboxClient, SandboxProcess
from sandbox.engine.caps import CapLedger
from sandbox.errors import CAP_MESSAGE, DUPLICATE_MESSAGE, PlanRejectedError
from sandbox.plans.grades import DEFAULT_GRADE_RULES, check_plan_grades
from sandbox.protocol.messages import (
    Aggregate,
    AggregateKind,
    Binary,
    Column,
    ColumnInfo,
    DatasetInfo,
    ErrorReply,
    ExecuteRequest,
    ExecuteResult,
    Func,
    GroupKey,
    Literal,
    QueryPlan,
    TableInfo,
)
from tests.helpers import Env

COUNT = QueryPlan("registry", "residents", (Aggregate(AggregateKind.COUNT),), ())


@pytest.fixture(scope="module")
def tiny_cap_sandbox(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxClient]:
    """A sandbox whose catalog caps the registry at epsilon 1.0 per month."""
    root = tmp_path_factory.mktemp("cap")
    text = (ROOT / "policies" / "catalog.toml").read_text()
    catalog = root / "catalog.toml"
    catalog.write_text(text.replace("epsilon_per_period = 1000.0", "epsilon_per_period = 1.0"))
    import tempfile
    sock_dir = Path(tempfile.mkdtemp(prefix="pgw-cap-"))  # Unix socket paths must be short
    proc = SandboxProcess.start(catalog, sock_dir / "s.sock", env.data_dir,
                                ["--state-dir", str(root / "owner")])
    yield proc.client()
    proc.stop()


@pytest.mark.integration
def test_sandbox_refuses_past_its_own_cap(tiny_cap_sandbox: SandboxClient) -> None:
    """Plans sent straight to the sandbox (no gateway budget at all) stop at the data owner's cap."""
    c = tiny_cap_sandbox
    assert isinstance(c.execute(ExecuteRequest("a/1", COUNT, 0.6), timeout_s=60), ExecuteResult)
    assert c.execute(ExecuteRequest("a/2", COUNT, 0.6), timeout_s=60) == ErrorReply("rejected", CAP_MESSAGE)
    assert isinstance(c.execute(ExecuteRequest("b/1", COUNT, 0.4), timeout_s=60), ExecuteResult)
    assert c.execute(ExecuteRequest("b/2", COUNT, 1e-6), timeout_s=60) == ErrorReply("rejected", CAP_MESSAGE)


@pytest.mark.integration
def test_sandbox_never_reruns_a_charged_request_id(tiny_cap_sandbox: SandboxClient) -> None:
    """A replayed request id is neither charged twice nor answered with fresh noise."""
    reply = tiny_cap_sandbox.execute(ExecuteRequest("a/1", COUNT, 0.001), timeout_s=60)
    assert reply == ErrorReply("rejected", DUPLICATE_MESSAGE)


@pytest.fixture(scope="module")
def zcdp_cap_sandbox(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxClient]:
    """Another sandbox capping the registry at epsilon 1.0 per month, with a fresh cap ledger."""
    root = tmp_path_factory.mktemp("zcap")
    text = (ROOT / "policies" / "catalog.toml").read_text()
    catalog = root / "catalog.toml"
    catalog.write_text(text.replace("epsilon_per_period = 1000.0", "epsilon_per_period = 1.0")
                       .replace("conversion_delta = 1e-7 ", "conversion_delta = 1e-6 "))
    import tempfile
    sock_dir = Path(tempfile.mkdtemp(prefix="pgw-zcap-"))
    proc = SandboxProcess.start(catalog, sock_dir / "s.sock", env.data_dir,
                                ["--state-dir", str(root / "owner")])
    yield proc.client()
    proc.stop()


@pytest.mark.integration
def test_sandbox_counts_a_zcdp_release_at_the_owners_conversion_delta(zcdp_cap_sandbox: SandboxClient) -> None:
    """A zCDP plan counts against the data owner's epsilon cap as the epsilon of OpenDP's conversion of its
    own rho at the OWNER's conversion_delta (1e-6 here), whatever delta the gateway would report: with rho
    0.001 that is about 0.18, so exactly 5 fit in a cap of 1.0, and the sandbox refuses the 6th itself."""
    from sandbox.pricing import zcdp

    c = zcdp_cap_sandbox
    bad = c.execute(ExecuteRequest("z/0", COUNT, 0.1, rho=0.001), timeout_s=60)
    assert isinstance(bad, ErrorReply) and bad.kind == "rejected"  # rho and epsilon at once
    replies = [c.execute(ExecuteRequest(f"z/{i}", COUNT, 0.0, rho=0.001), timeout_s=60) for i in range(1, 9)]
    answered = [r for r in replies if isinstance(r, ExecuteResult)]
    cost = answered[0].costs[0]
    assert cost.mechanism == "discrete_gaussian" and cost.rho <= 0.001 and cost.epsilon == 0.0
    eps = zcdp.rho_to_epsilon(cost.rho, 1e-6)
    assert len(answered) == int(1.0 / eps) == 5
    assert replies[5:] == [ErrorReply("rejected", CAP_MESSAGE)] * 3


def test_cap_ledger_is_exact_and_idempotent(tmp_path: Path) -> None:
    """Ten charges of 0.1 fill a cap of 1.0 exactly; windows bound what counts; duplicates are refused."""
    from sandbox.owner_caps import OwnerCap
    from sandbox.pricing.cap_rules import ReleaseLoss, counts
    from sandbox.pricing.periods import Period

    led = CapLedger(tmp_path / "caps.sqlite3")
    cap = OwnerCap("epsilon", 1.0, 0.0, Period("calendar", "day"))
    tenth = counts(ReleaseLoss("pure", 0.1), None)
    assert [led.charge(f"r{i}", "d", "query", tenth, cap, now=1.0) for i in range(10)] == ["charged"] * 10
    assert led.charge("r10", "d", "query", counts(ReleaseLoss("pure", 1e-9), None), cap, now=1.0) == "exceeded"
    assert led.charge("r0", "d", "train", tenth, cap, now=1.0) == "duplicate"
    assert led.charge("r11", "d", "query", counts(ReleaseLoss("pure", 1.0), None), cap, now=86400.0) == "charged"
    assert led.sums("d", 0.0, 86400.0).epsilon_units == 10**9


def test_grades_refuse_a_sensitive_group_key() -> None:
    """With the catalog's rules a sensitive column may be filtered and aggregated, not grouped by."""
    table = TableInfo("t", (
        ColumnInfo("pid", "int64", "identifier"),
        ColumnInfo("band", "string", "sensitive", domain=("a", "b")),
        ColumnInfo("income", "int64", "sensitive", lower=0, upper=10),
    ), 1)
    dataset = DatasetInfo("d", "pid", (table,), "v1")
    rules = {**DEFAULT_GRADE_RULES, "sensitive": frozenset({"filter", "aggregate_input"})}
    ok = QueryPlan("d", "t", (Aggregate(AggregateKind.SUM, Column("income"), 1.0, 0.0, 10.0),), (),
                   where=Binary("=", Column("band"), Literal("a")))
    check_plan_grades(ok, dataset, rules)
    grouped = QueryPlan("d", "t", (Aggregate(AggregateKind.COUNT),), (),
                        group_by=(GroupKey("band", Column("band"), ("a", "b")),))
    with pytest.raises(PlanRejectedError, match="group_key"):
        check_plan_grades(grouped, dataset, rules)
    # issue-expr: every column inside a group-key expression is a group_key use
    expr_key = GroupKey("k", Func("lower", (Column("band"),)), ("a", "b"))
    grouped = QueryPlan("d", "t", (Aggregate(AggregateKind.COUNT),), (), group_by=(expr_key,))
    with pytest.raises(PlanRejectedError, match="group_key"):
        check_plan_grades(grouped, dataset, rules)
    with pytest.raises(PlanRejectedError, match="filter"):
        check_plan_grades(QueryPlan("d", "t", (Aggregate(AggregateKind.COUNT),), (),
                                    where=Binary(">", Column("pid"), Literal(3))), dataset, rules)
