"""zCDP grants in the ledger: exact nano-rho sums, nested member/organisation levels in rho, the data
owner's epsilon cap counting each release's converted epsilon, and budget status in rho + (eps, delta)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from gateway.budgets.governor import Governor, OwnerCap
from gateway.budgets.ledger import GrantKey, Ledger, PrivacyLoss, Reservation
from gateway.errors import PrivacyBudgetExhaustedError
from gateway.policy.periods import Period
from gateway.policy.policy import parse_policy
from gateway.storage.state import StateStore
from sandbox.pricing import zcdp
from tests.gateway.policy.test_policy_zcdp import V2

NOW = 1_750_000_000.0
DELTA = 1e-6


def _governor(tmp_path: Path, cap: float | None = None) -> Governor:
    policy = parse_policy(tomllib.loads(V2), "op.toml")
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    # the owner converts zCDP releases at its own conversion_delta (here equal to the grant's delta)
    caps = {"registry": OwnerCap("epsilon", cap, 1e-4, Period("lifetime"), conversion_delta=DELTA)
            } if cap is not None else {}
    return Governor(tmp_path / "op.toml", policy, ledger, StateStore(ledger.path), caps, {"registry": "Bureau"})


def _cost(rho: float, selection_delta: float = 0.0) -> PrivacyLoss:
    return PrivacyLoss(zcdp.to_approx_dp(rho, selection_delta, DELTA)[0], selection_delta, rho)


def _charge(gv: Governor, who: str, rid: str, rho: float, selection_delta: float = 0.0) -> None:
    out = gv.reserve(GrantKey(who, "registry", "research"), request_id=rid, fingerprint="fp-" + rid,
                     cost=_cost(rho, selection_delta), request_units=1, now=NOW)
    assert isinstance(out, Reservation)


def test_rho_sums_exactly_and_the_organisation_level_binds(tmp_path: Path) -> None:
    """Ten charges of 0.05 fill the organisation's rho 0.5 exactly; the next is refused, nothing charged."""
    gv = _governor(tmp_path)
    for i in range(10):
        _charge(gv, "analyst", f"r{i}", 0.05)
    with pytest.raises(PrivacyBudgetExhaustedError) as info:
        _charge(gv, "analyst", "r10", 1e-9)
    assert info.value.metadata["level"] == "organization"
    assert "rho" in info.value.message
    status = gv.budget_status(GrantKey("analyst", "registry", "research"), now=NOW)
    assert status.spent.rho == 0.5 and status.remaining.rho == 0.0
    assert status.limiting_level == "organization"
    # reported as (epsilon, delta) from the total rho: OpenDP's conversion of 0.5, not 10 x eps(0.05)
    assert (status.spent.epsilon, status.spent.delta) == zcdp.to_approx_dp(0.5, 0.0, DELTA)
    assert status.spent.epsilon < 10 * zcdp.rho_to_epsilon(0.05, DELTA)


def test_member_level_is_in_rho(tmp_path: Path) -> None:
    gv = _governor(tmp_path)
    _charge(gv, "intern", "i1", 0.05)
    _charge(gv, "intern", "i2", 0.05)
    with pytest.raises(PrivacyBudgetExhaustedError) as info:
        _charge(gv, "intern", "i3", 0.01)
    assert info.value.metadata["level"] == "member"
    assert float(info.value.metadata["remainingRho"]) == 0.0
    status = gv.budget_status(GrantKey("intern", "registry", "research"), now=NOW)
    assert (status.budget.rho, status.spent.rho, status.remaining.rho) == (0.1, 0.1, 0.0)
    # the organisation's level saw the member's charges too
    _charge(gv, "analyst", "a1", 0.4)
    with pytest.raises(PrivacyBudgetExhaustedError):
        _charge(gv, "analyst", "a2", 0.01)


def test_selection_delta_is_capped_at_half_the_grant_delta(tmp_path: Path) -> None:
    gv = _governor(tmp_path)
    _charge(gv, "analyst", "s1", 0.01, selection_delta=4e-7)
    with pytest.raises(PrivacyBudgetExhaustedError) as info:
        _charge(gv, "analyst", "s2", 0.01, selection_delta=2e-7)
    assert "delta" in info.value.message
    status = gv.budget_status(GrantKey("analyst", "registry", "research"), now=NOW)
    assert (status.spent.epsilon, status.spent.delta) == zcdp.to_approx_dp(status.spent.rho, 4e-7, DELTA)


def test_data_owner_cap_counts_the_converted_epsilon(tmp_path: Path) -> None:
    """A cap of epsilon 1.0 holds floor(1 / eps(0.002)) releases of rho 0.002 whatever the rho budget, each
    converted at the owner's conversion_delta."""
    gv = _governor(tmp_path, cap=1.0)
    per = zcdp.rho_to_epsilon(0.002, DELTA)
    fits = int(1.0 / per)
    for i in range(fits):
        _charge(gv, "analyst", f"c{i}", 0.002)
    status = gv.budget_status(GrantKey("analyst", "registry", "research"), now=NOW)
    assert status.limiting_level == "dataset_cap"
    assert status.remaining.rho < 0.002  # what one more request could still spend under the cap
    assert zcdp.rho_to_epsilon(status.remaining.rho, DELTA) <= 1.0 - fits * per + 1e-9
    with pytest.raises(PrivacyBudgetExhaustedError) as info:
        _charge(gv, "analyst", "over", 0.002)
    assert info.value.metadata["level"] == "dataset_cap"


def test_operator_adjusts_a_zcdp_grant_in_rho(tmp_path: Path) -> None:
    """AdjustGrant's rho and max_rho_per_query apply to a zcdp grant for the next charge, survive a restart
    of the governor (stored with the other overrides), and epsilon adjustments are refused on it."""
    from gateway.errors import InvalidArgumentError
    from gateway.policy.model import GrantOverride

    gv = _governor(tmp_path)
    [g] = [g for g in gv.governance.grants if g.zcdp]
    for i in range(10):
        _charge(gv, "analyst", f"r{i}", 0.05)
    with pytest.raises(PrivacyBudgetExhaustedError):
        _charge(gv, "analyst", "over", 0.05)
    gv.adjust(g.organization, g.dataset, g.purpose, GrantOverride(rho=0.6), "ops")
    _charge(gv, "analyst", "after", 0.05)  # 0.55 of the new 0.6
    status = gv.budget_status(GrantKey("analyst", "registry", "research"), now=NOW)
    assert status.budget.rho == 0.6 and status.remaining.rho == pytest.approx(0.05)
    gv.adjust(g.organization, g.dataset, g.purpose, GrantOverride(max_rho_per_query=0.01), "ops")
    reopened = _governor(tmp_path)  # the same state file: the merged override (rho 0.6, max 0.01) stays
    [h] = [h for h in reopened.governance.grants if h.zcdp]
    assert (h.rho, h.max_rho_per_query) == (0.6, 0.01)
    assert h.epsilon == zcdp.rho_to_epsilon(0.6, h.delta)  # displayed equivalent follows the new rho
    for bad in (GrantOverride(epsilon=2.0), GrantOverride(rho=h.max_rho_per_query / 2)):
        with pytest.raises(InvalidArgumentError) as info:
            reopened.adjust(g.organization, g.dataset, g.purpose, bad, "ops")
        assert info.value.reason == "INVALID_ADJUSTMENT"


PURE_V2 = (V2.replace('privacy_definition = "zcdp"\nrho = 0.5\ndelta = 1e-6\nmax_rho_per_query = 0.05',
                      'privacy_definition = "approx_dp"\nepsilon = 4.0\ndelta = 1e-6\nmax_epsilon_per_query = 1.0')
           .replace("[grants.members.intern]\nrho = 0.1\ndelta = 1e-6",
                    "[grants.members.intern]\nepsilon = 1.0\ndelta = 1e-6"))


def _governor_from(tmp_path: Path, text: str) -> Governor:
    policy = parse_policy(tomllib.loads(text), "op.toml")
    ledger = Ledger(tmp_path / "ledger.sqlite3")
    return Governor(tmp_path / "op.toml", policy, ledger, StateStore(ledger.path), {}, {"registry": "Bureau"})


def test_pure_to_rho_units_is_opendps_conversion() -> None:
    """The ledger's integer epsilon^2 / 2 equals OpenDP's make_pureDP_to_zCDP map, in rho units rounded up."""
    import opendp.prelude as dp

    from gateway.budgets.ledger import pure_to_rho_units
    from gateway.policy.periods import EPSILON_UNITS, RHO_UNITS, to_units
    from sandbox.pricing import mechanisms

    for eps in (1e-9, 0.001, 0.05, 0.1, 0.3, 1.0, 2.5, 10.0):
        meas = mechanisms.make_measurement(True, 1.0 / eps)  # map(1) = eps up to OpenDP's rounding
        pure = float(meas.map(1))
        rho = float(dp.c.make_pureDP_to_zCDP(meas).map(1))
        units = pure_to_rho_units(to_units(pure, EPSILON_UNITS, up=True))
        assert units >= to_units(rho, RHO_UNITS, up=True) - 1  # pure was rounded to units first
        assert abs(units - rho * RHO_UNITS) <= 2 + 1e-9 * rho * RHO_UNITS


def test_pure_charges_count_in_rho_after_a_switch_to_zcdp(tmp_path: Path) -> None:
    """Charges made while the grant was pure count as epsilon^2 / 2 against its new rho levels."""
    pure = _governor_from(tmp_path, PURE_V2)
    key = GrantKey("analyst", "registry", "research")
    for i in range(4):  # 4 x eps 0.25 -> 4 x rho 0.03125 = 0.125 after the switch
        out = pure.reserve(key, request_id=f"p{i}", fingerprint=f"fp{i}", cost=PrivacyLoss(0.25),
                           request_units=1, now=NOW)
        assert isinstance(out, Reservation)
    gv = _governor_from(tmp_path, V2)
    status = gv.budget_status(key, now=NOW)
    assert status.spent.rho == pytest.approx(0.125, abs=1e-9) and status.remaining.rho == pytest.approx(0.375, abs=1e-9)
    for i in range(7):  # 7 x 0.05 = 0.35 fits in the 0.375 left ...
        _charge(gv, "analyst", f"z{i}", 0.05)
    with pytest.raises(PrivacyBudgetExhaustedError) as info:  # ... an eighth does not
        _charge(gv, "analyst", "z7", 0.05)
    assert info.value.metadata["level"] == "organization"


def test_approximate_dp_charges_exhaust_a_switched_rho_level(tmp_path: Path) -> None:
    """An (epsilon, delta > 0) charge has no zCDP conversion in OpenDP: the switched level counts as spent."""
    pure = _governor_from(tmp_path, PURE_V2)
    key = GrantKey("intern", "registry", "research")
    out = pure.reserve(key, request_id="sel", fingerprint="fp", cost=PrivacyLoss(0.1, 1e-8), request_units=1, now=NOW)
    assert isinstance(out, Reservation)
    gv = _governor_from(tmp_path, V2)
    with pytest.raises(PrivacyBudgetExhaustedError) as info:
        _charge(gv, "intern", "z", 1e-6)
    assert info.value.metadata["level"] == "member"
    assert gv.budget_status(key, now=NOW).remaining.rho == 0.0
    with pytest.raises(PrivacyBudgetExhaustedError) as info:  # the organisation's window holds it too
        _charge(gv, "analyst", "a", 1e-6)
    assert info.value.metadata["level"] == "organization"


def test_zcdp_status_after_a_reservation_equals_a_fresh_read(tmp_path: Path) -> None:
    """The rho status an answer carries (built from its reservation) equals reading every level again."""
    gv = _governor(tmp_path, cap=50.0)
    key = GrantKey("intern", "registry", "research")
    for i, (rho, sel) in enumerate([(0.01, 0.0), (0.02, 1e-7), (0.005, 0.0)]):
        out = gv.reserve(key, request_id=f"z{i}", fingerprint=f"fp{i}", cost=_cost(rho, sel), request_units=1,
                         now=NOW)
        assert isinstance(out, Reservation)
        assert gv.budget_status(key, after=out) == gv.budget_status(key, now=NOW)


def test_grant_near_exhaustion_counts_rho_and_earlier_pure_charges(tmp_path: Path) -> None:
    """On a zCDP grant the rule reads the rho level as the ledger checks it: pure charges made before the
    switch count as epsilon^2 / 2."""
    from gateway.budgets.alerts import AlertEngine

    alert = '\n[[alerts]]\nrule = "grant_near_exhaustion"\nthreshold = 0.5\n'
    pure = _governor_from(tmp_path, PURE_V2 + alert)
    key = GrantKey("analyst", "registry", "research")
    for i in range(4):  # rho 4 x 0.5^2 / 2 = 0.5 ... of the organisation's 0.5 after the switch
        out = pure.reserve(key, request_id=f"p{i}", fingerprint="fp", cost=PrivacyLoss(0.5), request_units=1, now=NOW)
        assert isinstance(out, Reservation)
    gv = _governor_from(tmp_path, V2 + alert)
    AlertEngine(gv).check_exhaustion(NOW)
    fired = [a for a in gv.state.alerts() if a[1] == "grant_near_exhaustion"]
    assert [a[2] for a in fired] == ["bank/registry/research"] and fired[0][3].startswith("100.0%")
