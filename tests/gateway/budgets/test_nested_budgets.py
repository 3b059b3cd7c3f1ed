"""Nested, periodic budgets in the real SQLite ledger, with explicit clocks (no sleeping)."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gateway.budgets.governor import Governor, OwnerCap
from gateway.budgets.ledger import BudgetLimit, GrantKey, Ledger, Metering, PrivacyLoss, Reservation
from gateway.errors import PrivacyBudgetExhaustedError
from gateway.policy.periods import Period, Window
from gateway.policy.policy import parse_policy
from gateway.release.usage import build_report
from gateway.storage.state import StateStore
from tests.gateway.policy.test_policy_v2 import BASE

MONTH = Period("calendar", "month")


def ts(s: str) -> float:
    """RFC 3339 -> epoch seconds."""
    return datetime.fromisoformat(s).replace(tzinfo=UTC).timestamp()


def _governor(tmp_path: Path, text: str = BASE, cap: float | None = None,
              cap_period: Period = MONTH) -> Governor:
    policy = parse_policy(tomllib.loads(text), "op.toml")
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    caps = {"registry": OwnerCap("epsilon", cap, 0.0, cap_period)} if cap is not None else {}
    return Governor(tmp_path / "op.toml", policy, ledger, StateStore(ledger.path), caps,
                    {"registry": "Bureau"})


def _charge(gv: Governor, who: str, rid: str, eps: float, now: float, units: int = 1) -> None:
    out = gv.reserve(GrantKey(who, "registry", "credit"), request_id=rid, fingerprint="fp-" + rid,
                     cost=PrivacyLoss(eps), request_units=units, now=now)
    assert isinstance(out, Reservation)


def _level(exc: pytest.ExceptionInfo[PrivacyBudgetExhaustedError]) -> str:
    return exc.value.metadata["level"]


def test_member_then_organization_limits_are_exact(tmp_path: Path) -> None:
    """intern stops at its 1.0, the organisation at 3.0 across members; a refusal charges nothing."""
    gv = _governor(tmp_path)
    now = ts("2026-03-10T12:00:00")
    for i in range(10):  # ten charges of 0.1 fit a budget of exactly 1.0
        _charge(gv, "intern", f"i{i}", 0.1, now)
    with pytest.raises(PrivacyBudgetExhaustedError) as exc:
        _charge(gv, "intern", "i10", 1e-6, now)
    assert _level(exc) == "member" and exc.value.metadata["remainingEpsilon"] == "0.0"
    _charge(gv, "analyst", "a0", 1.0, now)
    _charge(gv, "analyst", "a1", 0.7, now)
    for i in range(3):  # three charges of 0.1 exactly fill the remaining 0.3
        _charge(gv, "analyst", f"b{i}", 0.1, now)
    with pytest.raises(PrivacyBudgetExhaustedError) as exc:
        _charge(gv, "analyst", "a2", 0.000001, now)
    assert _level(exc) == "organization"
    status = gv.budget_status(GrantKey("analyst", "registry", "credit"), now)
    assert status.remaining.epsilon == 0.0 and status.limiting_level == "organization"
    assert (status.period, status.period_start, status.period_end, status.refreshes_at) == (
        "month", "2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z", "2026-04-01T00:00:00Z")
    gv.ledger.verify()
    gv.ledger.verify_units()


def test_dataset_cap_spans_organizations(tmp_path: Path) -> None:
    """The data owner's cap counts every organisation's charges on the dataset."""
    text = BASE + """
[organizations.city]
name = "City"
[organizations.city.members.planner]
roles = ["consumer"]
[[grants]]
organization = "city"
dataset = "registry"
purpose = "credit"
privacy_definition = "pure_dp"
epsilon = 3.0
delta = 0.0
max_epsilon_per_query = 1.0
period = "month"
"""
    gv = _governor(tmp_path, text, cap=2.5)
    now = ts("2026-03-10T00:00:00")
    _charge(gv, "analyst", "a", 1.0, now)
    _charge(gv, "planner", "p", 1.0, now)
    with pytest.raises(PrivacyBudgetExhaustedError) as exc:
        _charge(gv, "planner", "q", 0.6, now)
    assert _level(exc) == "dataset_cap"
    _charge(gv, "planner", "q", 0.5, now)


def test_calendar_period_refreshes_at_the_boundary(tmp_path: Path) -> None:
    """A month's charges stop counting at 00:00 UTC on the 1st; the last second still counts."""
    gv = _governor(tmp_path)
    _charge(gv, "intern", "m1", 1.0, ts("2026-01-31T23:59:59"))
    with pytest.raises(PrivacyBudgetExhaustedError):
        _charge(gv, "intern", "m2", 0.5, ts("2026-01-31T23:59:59.5"))
    _charge(gv, "intern", "m2", 1.0, ts("2026-02-01T00:00:00"))


@pytest.mark.parametrize(("unit", "start", "end"), [
    ("day", "2026-03-04T00:00:00Z", "2026-03-05T00:00:00Z"),
    ("week", "2026-03-02T00:00:00Z", "2026-03-09T00:00:00Z"),  # ISO week: Monday
    ("month", "2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z"),
])
def test_calendar_windows(unit: str, start: str, end: str) -> None:
    """Day, week and month windows in UTC."""
    from gateway.policy.periods import rfc3339
    w = Period("calendar", unit).window(ts("2026-03-04T15:30:00"))
    assert (rfc3339(w.start), rfc3339(w.end)) == (start, end)


def test_rolling_window_returns_budget_as_charges_age_out(tmp_path: Path) -> None:
    """Rolling 7 days: a charge counts for exactly 7 days; refreshes_at is the oldest charge + 7 days."""
    gv = _governor(tmp_path, BASE.replace('period = "month"', 'period = "rolling"\nwindow_days = 7'))
    t0 = ts("2026-03-01T10:00:00")
    _charge(gv, "intern", "r1", 0.6, t0)
    _charge(gv, "intern", "r2", 0.4, t0 + 86400)
    with pytest.raises(PrivacyBudgetExhaustedError):
        _charge(gv, "intern", "r3", 0.5, t0 + 7 * 86400 - 1)
    status = gv.budget_status(GrantKey("intern", "registry", "credit"), t0 + 2 * 86400)
    assert status.period == "rolling 7d" and status.refreshes_at == "2026-03-08T10:00:00Z"
    _charge(gv, "intern", "r3", 0.6, t0 + 7 * 86400)  # r1 aged out: 0.4 + 0.6 = 1.0


def test_usage_report_is_exact(tmp_path: Path) -> None:
    """A known sequence of charges gives exact requests, epsilon, prices and owner shares."""
    gv = _governor(tmp_path)
    now = ts("2026-03-10T00:00:00")
    _charge(gv, "analyst", "u1", 0.25, now, units=2)   # 2 x 0.5 + 0.25 x 20 = 6.00
    _charge(gv, "analyst", "u2", 0.1, now, units=1)    # 0.5 + 2.0 = 2.50
    _charge(gv, "intern", "u3", 0.3, now, units=3)     # 1.5 + 6.0 = 7.50
    w = Period("calendar", "month").window(now)
    report = build_report(gv.ledger.charges_between(w.start, w.end), w.start, w.end)
    assert report.to_csv() == (
        "organization,member,purpose,use_class,dataset,data_owner,requests,request_units,epsilon,delta,"
        "currency,price\n"
        "bank,analyst,credit,commercial,registry,Bureau,2,3,0.35,0,EUR,8.50\n"
        "bank,intern,credit,commercial,registry,Bureau,1,3,0.3,0,EUR,7.50\n"
    )
    import json
    j = json.loads(report.to_json())
    assert j["totals"] == {"EUR": "16.00"} and j["requests"] == 3 and j["epsilon"] == "0.65"
    assert j["data_owners"] == [{"data_owner": "Bureau", "currency": "EUR", "requests": 3,
                                 "epsilon": "0.65", "proceeds": "16.00", "share": "1.000000"}]
    assert j["period_start"] == "2026-03-01T00:00:00Z"


def test_refund_removes_the_charge_from_every_level(tmp_path: Path) -> None:
    """release_unused (sandbox unreachable) gives the budget back at member and organisation level."""
    gv = _governor(tmp_path)
    now = ts("2026-03-10T00:00:00")
    _charge(gv, "intern", "x", 1.0, now)
    gv.ledger.release_unused(GrantKey("intern", "registry", "credit"), "x")
    _charge(gv, "intern", "y", 1.0, now)


def test_ledger_level_scopes_directly(tmp_path: Path) -> None:
    """reserve_nested with explicit limits: the window bounds decide what counts."""
    ledger = Ledger(tmp_path / "l.sqlite3")
    key = GrantKey("m", "d", "p")
    lim = BudgetLimit("member", PrivacyLoss(1.0), Window(100.0, 200.0))
    for i, t in enumerate((50.0, 100.0, 199.0)):
        ledger.reserve_nested(key, request_id=f"r{i}", fingerprint="f", cost=PrivacyLoss(0.5),
                              limits=[BudgetLimit("member", PrivacyLoss(10.0), Window(None, None))],
                              metering=Metering("o"), now=t)
    assert ledger.window_spent(lim, key, "o") == (1_000_000_000, 0, 0)  # 100.0 and 199.0, not 50.0


def test_policy_snapshot_reads_once_and_the_next_request_sees_an_adjustment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside one request's snapshot the overrides are read once; an operator's adjustment made meanwhile
    applies from the next request's snapshot on."""
    from gateway.policy.model import GrantOverride

    gv = _governor(tmp_path)
    org_grant = gv.governance.grants[0]
    reads: list[int] = []
    real = gv.state.overrides

    def counting() -> dict[tuple[str, str, str], GrantOverride]:
        reads.append(1)
        return real()

    monkeypatch.setattr(gv.state, "overrides", counting)
    with gv.snapshot() as policy:
        for _ in range(5):
            assert gv.current() is policy
        gv.adjust(org_grant.organization, org_grant.dataset, org_grant.purpose,
                  GrantOverride(epsilon=org_grant.epsilon / 2), "operator")
        assert gv.current() is policy
    assert len(reads) == 2  # the snapshot, and the adjustment's own merge
    with gv.snapshot():
        adjusted = gv.governance.org_grant(org_grant.organization, org_grant.dataset, org_grant.purpose)
    assert adjusted is not None and adjusted.epsilon == org_grant.epsilon / 2


def test_status_after_a_reservation_equals_a_fresh_read(tmp_path: Path) -> None:
    """The answer's budget status is built from the reservation's own reads; it must equal reading the
    ledger again at the same moment (member, organisation and cap levels)."""
    gv = _governor(tmp_path, cap=5.0)
    now = ts("2026-03-10T12:00:00")
    key = GrantKey("intern", "registry", "credit")
    _charge(gv, "analyst", "a0", 0.4, now)
    for i in range(3):
        out = gv.reserve(key, request_id=f"i{i}", fingerprint=f"fp{i}", cost=PrivacyLoss(0.1 * (i + 1)),
                         request_units=1, now=now)
        assert isinstance(out, Reservation) and out.at == now and len(out.level_units) == 3
        assert gv.budget_status(key, after=out) == gv.budget_status(key, now)


def test_unusual_spend_rate_fires_on_a_burst_and_not_on_steady_spending(tmp_path: Path) -> None:
    """An organisation spending 50x its hourly baseline in the last hour fires `unusual_spend_rate`, read
    from the ledger's organisation-wide buckets; steady spending does not, and neither does the same burst
    measured against a baseline that already had it."""
    from gateway.budgets.alerts import AlertEngine

    text = BASE + '\n[[alerts]]\nrule = "unusual_spend_rate"\nfactor = 5\n'
    gv = _governor(tmp_path, text)
    engine = AlertEngine(gv)
    start = ts("2026-03-10T00:00:00")
    for h in range(7 * 24):  # a week of 0.001 per hour
        _charge(gv, "analyst", f"steady{h}", 0.001, start + h * 3600.0 + 17.0)
    now = start + 7 * 86400.0 + 1800.0
    engine.check_spend_rate(now)
    assert not [a for a in gv.state.alerts() if a[1] == "unusual_spend_rate"]
    _charge(gv, "analyst", "burst", 0.05, now - 60.0)  # 50x the hourly baseline, within the last hour
    engine.check_spend_rate(now, only="bank")
    fired = [a for a in gv.state.alerts() if a[1] == "unusual_spend_rate"]
    assert len(fired) == 1 and fired[0][2] == "bank" and fired[0][3].startswith("0.05 epsilon in 3600s, baseline 0.001")
    later = now + 2 * 3600.0  # the burst is now in the baseline, and the last hour was quiet
    engine.check_spend_rate(later)
    assert len([a for a in gv.state.alerts() if a[1] == "unusual_spend_rate"]) == 1
    assert gv.ledger.organization_units("bank", None, None) == (7 * 24 * 1_000_000 + 50_000_000)


def test_grant_near_exhaustion_fires_once_per_period(tmp_path: Path) -> None:
    """Half of the organisation's 3.0 spent fires the rule for the grant (once); the intern's own budget
    below the threshold does not."""
    from gateway.budgets.alerts import AlertEngine

    gv = _governor(tmp_path, BASE + '\n[[alerts]]\nrule = "grant_near_exhaustion"\nthreshold = 0.5\n')
    engine = AlertEngine(gv)
    now = ts("2026-03-10T12:00:00")
    _charge(gv, "analyst", "a0", 1.0, now)
    _charge(gv, "intern", "i0", 0.4, now)
    engine.check_exhaustion(now)
    assert not [a for a in gv.state.alerts() if a[1] == "grant_near_exhaustion"]
    _charge(gv, "analyst", "a1", 0.1, now)  # 1.5 of 3.0
    engine.check_exhaustion(now)
    engine.check_exhaustion(now + 60)
    fired = [a for a in gv.state.alerts() if a[1] == "grant_near_exhaustion"]
    assert [a[2] for a in fired] == ["bank/registry/credit"] and fired[0][3].startswith("50.0% of the budget")
