"""The data owner's cap definitions and counting rules: validation, exact counts against OpenDP's own
conversions, refusals, the public JSON form, and what a catalog reload may change."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import opendp.prelude as dp
import pytest

from gateway.settings import ROOT
from sandbox.catalog import load_catalog
from sandbox.errors import ConfigError
from sandbox.owner_caps import OwnerCap, SubjectCap, parse_owner_cap, parse_subject_caps
from sandbox.pricing.cap_rules import CapCounts, ReleaseLoss, counts, pure_to_rho_units, refusal
from sandbox.pricing.periods import DELTA_UNITS, EPSILON_UNITS, RHO_UNITS, Period, to_units
from sandbox.protocol.messages import decode_body, encode_frame
from sandbox.protocol.owner import CapUsage, CapUsageReply, CapUsageRequest, ReloadRequest

dp.enable_features("contrib")

MONTH = Period("calendar", "month")


def _cap(body: str) -> OwnerCap:
    return parse_owner_cap("catalog.toml", "datasets.d.caps", tomllib.loads(body))


@pytest.mark.parametrize(("body", "key", "problem"), [
    ('epsilon_per_period = 1.0\nrho_per_period = 0.5\ndelta_per_period = 0.0\nperiod = "month"',
     "datasets.d.caps.rho_per_period", "mixed definitions"),
    ('epsilon_per_period = 1.0\nlifetime_rho = 2.0\nlifetime_delta = 0.0\ndelta_per_period = 0.0\nperiod = "day"',
     "datasets.d.caps.lifetime_rho", "mixed definitions"),
    ('delta_per_period = 0.0\nperiod = "month"', "datasets.d.caps.epsilon_per_period", "missing"),
    ('epsilon_per_period = 1.0\nperiod = "month"', "datasets.d.caps.delta_per_period", "missing"),
    ('epsilon_per_period = nan\ndelta_per_period = 0.0\nperiod = "month"',
     "datasets.d.caps.epsilon_per_period", "finite, non-negative"),
    ('rho_per_period = inf\ndelta_per_period = 0.0\nperiod = "month"',
     "datasets.d.caps.rho_per_period", "finite, non-negative"),
    ('epsilon_per_period = -1.0\ndelta_per_period = 0.0\nperiod = "month"',
     "datasets.d.caps.epsilon_per_period", "finite, non-negative"),
    ('epsilon_per_period = 0.0\ndelta_per_period = 0.0\nperiod = "month"',
     "datasets.d.caps.epsilon_per_period", "positive"),
    ('epsilon_per_period = 1.0\ndelta_per_period = 1.0\nperiod = "month"',
     "datasets.d.caps.delta_per_period", "below 1"),
    ('epsilon_per_period = 1.0\ndelta_per_period = 1e-5\nperiod = "month"\nconversion_delta = 0.0',
     "datasets.d.caps.conversion_delta", "(0, 1)"),
    ('rho_per_period = 1.0\ndelta_per_period = 1e-5\nperiod = "month"\nconversion_delta = 1.0',
     "datasets.d.caps.conversion_delta", "(0, 1)"),
    ('epsilon_per_period = 1.0\ndelta_per_period = 1e-7\nperiod = "month"\nconversion_delta = 1e-6',
     "datasets.d.caps.conversion_delta", "exceeds delta_per_period"),
    ('epsilon_per_period = 1.0\ndelta_per_period = 1e-5\nperiod = "month"\nconversion_delta = 1e-6\n'
     'lifetime_epsilon = 5.0\nlifetime_delta = 1e-7', "datasets.d.caps.conversion_delta", "exceeds lifetime_delta"),
    ('epsilon_per_period = 1.0\ndelta_per_period = 0.0\nperiod = "month"\nlifetime_epsilon = 5.0',
     "datasets.d.caps.lifetime_delta", "missing"),
    ('epsilon_per_period = 1.0\ndelta_per_period = 0.0\nperiod = "month"\nlifetime_delta = 0.0',
     "datasets.d.caps.lifetime_epsilon", "missing"),
    ('epsilon_per_period = 1.0\ndelta_per_period = 0.0\nperiod = "lifetime"\nlifetime_epsilon = 5.0\n'
     'lifetime_delta = 0.0', "datasets.d.caps.lifetime_epsilon", "already a lifetime cap"),
    ('epsilon_per_period = 1.0\ndelta_per_period = 0.0\nperiod = "month"\nlifetime_epsilon = -5.0\n'
     'lifetime_delta = 0.0', "datasets.d.caps.lifetime_epsilon", "finite, non-negative"),
    ('epsilon_per_period = 1.0\ndelta_per_period = 0.0\nperiod = "month"\nepsilon = 2.0',
     "datasets.d.caps.epsilon", "unknown key"),
    ('epsilon_per_period = 1.0\ndelta_per_period = 0.0', "datasets.d.caps.period", "required"),
])
def test_invalid_caps_name_file_key_and_problem(body: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        _cap(body)
    assert (info.value.file, info.value.key) == ("catalog.toml", key)
    assert problem in info.value.problem, info.value.problem


def test_valid_caps_in_each_definition() -> None:
    e = _cap('epsilon_per_period = 10.0\ndelta_per_period = 1e-5\nperiod = "rolling"\nwindow_days = 30\n'
             'conversion_delta = 1e-7\nlifetime_epsilon = 100.0\nlifetime_delta = 1e-4')
    assert (e.measure, e.amount, e.delta, e.conversion_delta) == ("epsilon", 10.0, 1e-5, 1e-7)
    assert e.lifetime_units == (100 * EPSILON_UNITS, to_units(1e-4, DELTA_UNITS, up=False))
    assert e.period == Period("rolling", window_days=30) and e.units == 10 * EPSILON_UNITS
    r = _cap('rho_per_period = 0.5\ndelta_per_period = 0.0\nperiod = "week"\nconversion_delta = 0.5')
    assert (r.measure, r.units, r.delta_units, r.lifetime_units) == ("rho", RHO_UNITS // 2, 0, None)


def test_subject_caps_default_and_override() -> None:
    ds = {"verification_caps": {"period": "hour", "max_checks_per_subject_per_period": 5}}
    templates: dict[str, Any] = {"a": {}, "b": {"max_checks_per_subject_per_period": 2}}
    assert parse_subject_caps("f", "datasets.d", ds, templates) == (SubjectCap("a", 5, "hour"),
                                                                    SubjectCap("b", 2, "hour"))
    only = {"verification_caps": {"period": "day"}}
    assert parse_subject_caps("f", "datasets.d", only, templates) == (SubjectCap("b", 2, "day"),)
    with pytest.raises(ConfigError, match=r"datasets\.d\.verifications\.b\.max_checks_per_subject_per_period"):
        parse_subject_caps("f", "datasets.d", {}, templates)
    for bad, key in (({"period": "week"}, "period"), ({"period": "day", "max_checks_per_subject_per_period": 0},
                                                        "max_checks_per_subject_per_period"),
                     ({"period": "day", "x": 1}, "x")):
        with pytest.raises(ConfigError) as info:
            parse_subject_caps("f", "datasets.d", {"verification_caps": bad}, {})
        assert info.value.key == f"datasets.d.verification_caps.{key}"
    cap = SubjectCap("a", 5, "day")
    assert cap.period_start(1_767_225_600.0 + 3 * 3600 + 5) == 1_767_225_600  # 2026-01-01T03:00:05Z
    assert SubjectCap("a", 5, "hour").period_end(1_767_225_600.0 + 3 * 3600 + 5) == 1_767_225_600 + 4 * 3600


# -- counts, exactly as OpenDP converts ------------------------------------------------------------------


def _gaussian_threshold(rho_target: float, delta_s: float) -> dp.Measurement:
    """An approximate-zCDP measurement (OpenDP's Gaussian threshold) with map about (rho_target, delta_s)."""
    from sandbox.pricing import zcdp

    scale, threshold, _, _ = zcdp.calibrate_gaussian_threshold(1, rho_target, delta_s)
    return zcdp.gaussian_threshold(scale, threshold)


def test_zcdp_counts_on_an_epsilon_cap_are_opendps_conversion_at_the_owners_delta() -> None:
    """A delta_s-approximate rho-zCDP release counts (epsilon, conversion_delta + delta_s) on an epsilon cap,
    with epsilon exactly what OpenDP's make_fix_delta(make_zCDP_to_approxDP(m), conversion_delta + delta_s)
    gives for the release's own measurement; the delta counted is that total."""
    for rho_target, delta_s, conversion in ((0.01, 1e-9, 1e-6), (0.15, 4e-8, 1e-7), (2.0, 1e-10, 0.1)):
        m = _gaussian_threshold(rho_target, delta_s)
        rho, ds = m.map((1, 1, 1))  # type: ignore[no-untyped-call]
        eps, total = dp.c.make_fix_delta(dp.c.make_zCDP_to_approxDP(m), conversion + ds).map((1, 1, 1))  # type: ignore[no-untyped-call]
        c = counts(ReleaseLoss("zcdp", 0.0, ds, rho), conversion)
        assert abs(c.epsilon_units - eps * EPSILON_UNITS) <= 2 + 1e-9 * eps * EPSILON_UNITS, (rho, ds, eps)
        assert c.epsilon_units >= to_units(eps, EPSILON_UNITS, up=True) - 1
        assert c.delta_units == to_units(conversion, DELTA_UNITS, up=True) + to_units(ds, DELTA_UNITS, up=True)
        assert abs(total - (conversion + ds)) <= 1e-15
        assert (c.rho_units, c.rho_delta_units) == (to_units(rho, RHO_UNITS, up=True),
                                                    to_units(ds, DELTA_UNITS, up=True))
        assert not c.no_epsilon and not c.no_rho


def test_pure_counts_half_epsilon_squared_on_a_rho_cap_as_opendp_does() -> None:
    from sandbox.pricing import mechanisms

    for eps in (1e-6, 0.05, 0.3, 1.0, 4.0):
        meas = mechanisms.make_measurement(True, 1.0 / eps)
        pure = float(meas.map(1))  # type: ignore[no-untyped-call]
        rho = float(dp.c.make_pureDP_to_zCDP(meas).map(1))  # type: ignore[no-untyped-call]
        c = counts(ReleaseLoss.of(pure, 0.0, 0.0), None)
        assert c == CapCounts(to_units(pure, EPSILON_UNITS, up=True), 0,
                              pure_to_rho_units(to_units(pure, EPSILON_UNITS, up=True)), 0)
        assert abs(c.rho_units - rho * RHO_UNITS) <= 2 + 1e-9 * rho * RHO_UNITS


def test_counts_and_refusals_for_each_definition() -> None:
    approx = ReleaseLoss.of(0.5, 1e-7, 0.0)
    z = ReleaseLoss.of(0.0, 0.0, 0.02)
    assert approx.kind == "approx" and z.kind == "zcdp" and ReleaseLoss.of(0.1, 0.0, 0.0).kind == "pure"
    assert counts(approx, 1e-6) == CapCounts(5 * 10**8, 10**11, no_rho=True)
    assert counts(z, None) == CapCounts(0, 0, 2 * 10**7, 0, no_epsilon=True)
    eps_cap = OwnerCap("epsilon", 1.0, 1e-5, MONTH)
    rho_cap = OwnerCap("rho", 1.0, 1e-5, MONTH)
    assert "conversion_delta" in (refusal(eps_cap, z, "d") or "")
    assert refusal(OwnerCap("epsilon", 1.0, 1e-5, MONTH, conversion_delta=1e-6), z, "d") is None
    assert "no zCDP conversion" in (refusal(rho_cap, approx, "d") or "")
    assert refusal(rho_cap, z, "d") is None and refusal(eps_cap, approx, "d") is None and refusal(None, z, "d") is None


# -- public form and reload ----------------------------------------------------------------------------------


def test_public_catalog_carries_caps_subject_caps_and_grades() -> None:
    cat = load_catalog(ROOT / "policies" / "catalog.toml")
    info = cat.public({d.name: "v" for d in cat.datasets})
    again = decode_body(encode_frame(info)[4:])
    assert again == info
    reg = info.dataset("registry")
    assert reg is not None and reg.caps is not None and reg.caps.conversion_delta == 1e-7
    assert reg.caps.lifetime_amount == 10000.0
    assert SubjectCap("income_at_least", 30, "day") in reg.subject_caps
    rules = info.grade_rules()
    assert rules is not None and "group_key" not in rules["sensitive"]
    usage = CapUsageReply((CapUsage("registry", reg.caps, 1.0, None, counts_sum(), counts_sum()),), 2.0)
    for msg in (usage, ReloadRequest(), CapUsageRequest(("registry",))):
        assert decode_body(encode_frame(msg)[4:]) == msg


def counts_sum() -> Any:
    from sandbox.pricing.cap_rules import CapSums

    return CapSums(1, 2, 3, 4, 0, 1)


def test_reload_may_change_only_the_owners_settings(tmp_path: Path) -> None:
    text = (ROOT / "policies" / "catalog.toml").read_text()
    path = tmp_path / "catalog.toml"
    path.write_text(text)
    data = tmp_path / "data"
    first = load_catalog(path, data)
    settings = (text.replace("epsilon_per_period = 1000.0", "epsilon_per_period = 5.0")
                .replace('[grades.public]\nallows = ["group_key", "filter", "aggregate_input"]',
                         '[grades.public]\nallows = ["filter"]')
                .replace("max_checks_per_subject_per_period = 30", "max_checks_per_subject_per_period = 2"))
    path.write_text(settings)
    assert first.reload_problem(load_catalog(path, data)) is None
    for change, key in ((("max_rows_per_unit = 12", "max_rows_per_unit = 11"),
                         "datasets.registry.tables.social_insurance.max_rows_per_unit"),
                        (('domain = ["F", "M"]', 'domain = ["F", "M", "X"]'),
                         "datasets.registry.tables.residents.columns.sex.domain"),
                        (("ladder = [50000, 100000, 200000]", "ladder = [50000, 100000]"),
                         "datasets.registry.verifications.income_at_least.parameters.threshold.ladder"),
                        (('description = "Enterprise register (synthetic)"', 'description = "Enterprises"'),
                         "datasets.enterprises.description")):
        path.write_text(settings.replace(*change))
        problem = first.reload_problem(load_catalog(path, data))
        assert problem is not None and problem.startswith(key), (problem, key)
