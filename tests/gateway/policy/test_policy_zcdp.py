"""zcdp grants in both policy formats: loaded with rho, validated with errors naming file, key, problem."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError
from gateway.policy.governance import parse_governance
from gateway.policy.model import GrantOverride
from gateway.policy.policy import load_policy, parse_policy
from gateway.settings import ROOT
from sandbox.pricing import zcdp

V2 = """
schema = "privacy_gateway.operator.v2"
[organizations.bank]
name = "Bank"
[organizations.bank.members.analyst]
roles = ["consumer"]
[organizations.bank.members.intern]
roles = ["consumer"]
[purposes.research]
use_class = "public_welfare"
[[grants]]
organization = "bank"
dataset = "registry"
purpose = "research"
privacy_definition = "zcdp"
rho = 0.5
delta = 1e-6
max_rho_per_query = 0.05
period = "month"
[grants.members.intern]
rho = 0.1
delta = 1e-6
"""

V1 = """
schema = "privacy_gateway.operator.v1"
[consumers.analyst]
organization = "Bank"
[[grants]]
consumer = "analyst"
dataset = "registry"
purpose = "research"
privacy_definition = "zcdp"
rho = 0.5
delta = 1e-6
max_rho_per_query = 0.05
"""

_DELETE = object()


def _doc(text: str, **changes: Any) -> dict[str, Any]:
    data = tomllib.loads(text)
    for path, value in changes.items():
        node = data
        parts = path.split("__")
        for p in parts[:-1]:
            node = node[int(p)] if p.isdigit() else node[p]
        if value is _DELETE:
            del node[parts[-1]]
        else:
            node[parts[-1]] = value
    return data


def test_v2_zcdp_grant_loads_with_rho_and_its_equivalent() -> None:
    policy = parse_policy(_doc(V2), "op.toml")
    g = policy.grant("analyst", "registry", "research")
    assert g is not None and g.zcdp
    assert (g.rho, g.delta, g.max_rho_per_query) == (0.5, 1e-6, 0.05)
    assert g.epsilon == zcdp.rho_to_epsilon(0.5, 1e-6)  # display only: OpenDP's conversion
    intern = policy.grant("intern", "registry", "research")
    assert intern is not None and (intern.rho, intern.max_rho_per_query) == (0.1, 0.05)


def test_v1_zcdp_grant_loads() -> None:
    policy = parse_policy(_doc(V1), "op.toml")
    g = policy.grant("analyst", "registry", "research")
    assert g is not None and g.zcdp and (g.rho, g.delta, g.max_rho_per_query) == (0.5, 1e-6, 0.05)
    assert policy.governance is not None
    org = policy.governance.org_grant("analyst", "registry", "research")
    assert org is not None and org.rho == 0.5


def test_example_policy_has_a_zcdp_grant() -> None:
    policy = load_policy(ROOT / "policies" / "operator.toml")
    assert any(g.zcdp for g in policy.grants)


BAD = [
    ({"grants__0__rho": math.nan}, "grants[0].rho", "finite"),
    ({"grants__0__rho": -0.5}, "grants[0].rho", "got -0.5"),
    ({"grants__0__rho": 0.0}, "grants[0].rho", "positive"),
    ({"grants__0__rho": "a lot"}, "grants[0].rho", "must be a number"),
    ({"grants__0__rho": _DELETE}, "grants[0].rho", "required"),
    ({"grants__0__delta": _DELETE}, "grants[0].delta", "required"),
    ({"grants__0__delta": 0.0}, "grants[0].delta", "positive"),
    ({"grants__0__delta": math.inf}, "grants[0].delta", "finite"),
    ({"grants__0__delta": 1.0}, "grants[0].delta", "below 1"),
    ({"grants__0__max_rho_per_query": 0.6}, "grants[0].max_rho_per_query", "exceed"),
    ({"grants__0__max_rho_per_query": _DELETE}, "grants[0].max_rho_per_query", "required"),
    ({"grants__0__epsilon": 1.0}, "grants[0].epsilon", "unknown key"),
    ({"grants__0__privacy_definition": "renyi"}, "grants[0].privacy_definition", "must be one of"),
]


@pytest.mark.parametrize(("changes", "key", "problem"), BAD)
def test_v2_zcdp_fields_are_validated(changes: dict[str, Any], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_governance(_doc(V2, **changes), "op.toml")
    assert (info.value.file, info.value.key) == ("op.toml", key)
    assert problem in info.value.problem


@pytest.mark.parametrize(("changes", "key", "problem"), [
    *BAD,
    ({"grants__0__max_epsilon_per_query": 1.0}, "grants[0].max_epsilon_per_query", "unknown key"),
])
def test_v1_zcdp_fields_are_validated(changes: dict[str, Any], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_policy(_doc(V1, **changes), "op.toml")
    assert (info.value.file, info.value.key) == ("op.toml", key)
    assert problem in info.value.problem


@pytest.mark.parametrize(("changes", "key", "problem"), [
    ({"grants__0__members__intern__rho": 0.6}, "grants[0].members.intern.rho", "exceed"),
    ({"grants__0__members__intern__epsilon": 0.1}, "grants[0].members.intern.epsilon", "unknown key"),
    ({"grants__0__members__intern__delta": _DELETE}, "grants[0].members.intern.delta", "required"),
    ({"grants__0__members__intern__delta": 0.0}, "grants[0].members.intern.delta", "positive"),
])
def test_v2_zcdp_member_budgets_are_validated(changes: dict[str, Any], key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_governance(_doc(V2, **changes), "op.toml")
    assert (info.value.key, problem in info.value.problem) == (key, True)


def test_zcdp_grant_cannot_be_adjusted_in_epsilon() -> None:
    gov = parse_governance(_doc(V2), "op.toml")
    with pytest.raises(ValueError, match="rho"):
        gov.with_overrides({("bank", "registry", "research"): GrantOverride(epsilon=3.0)})
    later = gov.with_overrides({("bank", "registry", "research"): GrantOverride(delta=1e-5)})
    assert later.grants[0].epsilon == zcdp.rho_to_epsilon(0.5, 1e-5)


def test_broken_file_names_file_key_problem(tmp_path: Path) -> None:
    f = tmp_path / "op.toml"
    f.write_text(V2.replace("rho = 0.5", "rho = nan"))
    with pytest.raises(ConfigError, match=r"op.toml: grants\[0\].rho: must be finite"):
        load_policy(f)
