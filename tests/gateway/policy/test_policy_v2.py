"""Policy v2: the example file loads, v1 files are converted, and every field is validated."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.errors import ConfigError
from gateway.policy.governance import parse_governance
from gateway.policy.model import GrantOverride
from gateway.policy.policy import load_policy, parse_policy
from gateway.settings import ROOT
from tests.helpers import TEST_POLICY

BASE = """
schema = "privacy_gateway.operator.v2"
[organizations.bank]
name = "Bank"
[organizations.bank.members.analyst]
roles = ["consumer"]
[organizations.bank.members.intern]
roles = ["consumer"]
[organizations.ops]
name = "Ops"
[organizations.ops.members.admin]
roles = ["operator"]
[purposes.credit]
use_class = "commercial"
currency = "EUR"
price_per_request_unit = 0.5
price_per_epsilon = 20.0
[purposes.welfare]
use_class = "public_welfare"
[[grants]]
organization = "bank"
dataset = "registry"
purpose = "credit"
privacy_definition = "pure_dp"
epsilon = 3.0
delta = 0.0
max_epsilon_per_query = 1.0
period = "month"
[grants.members.intern]
epsilon = 1.0
delta = 0.0
"""


def _doc(**changes: Any) -> dict[str, Any]:
    data = tomllib.loads(BASE)
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


_DELETE = object()


def test_example_operator_policy_loads() -> None:
    """policies/operator.toml is a valid v2 policy with the documented identities and grants."""
    p = load_policy(ROOT / "policies" / "operator.toml")
    assert p.governance is not None and p.governance.schema == "privacy_gateway.operator.v2"
    assert set(p.identities) >= {"acme-bank-analyst", "acme-bank-intern", "city-planning", "ops-admin"}
    assert p.governance.has_role("ops-admin", "operator")
    intern = p.grant("acme-bank-intern", "registry", "credit-risk")
    assert intern is not None and intern.epsilon == 2.0
    assert p.governance.purposes["urban-planning"].use_class == "public_welfare"


def test_v1_policy_is_converted_per_consumer() -> None:
    """A v1 file becomes one organisation per consumer with lifetime periods and free purposes."""
    p = parse_policy(tomllib.loads(TEST_POLICY), "test.toml")
    gov = p.governance
    assert gov is not None and gov.schema == "privacy_gateway.operator.v1"
    assert gov.members["planner"].organization == "planner"
    g = gov.org_grant("planner", "registry", "planning")
    assert g is not None and g.period.kind == "lifetime" and g.epsilon == 1.0
    assert gov.purposes["planning"].use_class == "public_welfare"


@pytest.mark.parametrize(
    ("changes", "key", "problem"),
    [
        ({"grants__0__epsilon": float("nan")}, "grants[0].epsilon", "finite"),
        ({"grants__0__epsilon": float("inf")}, "grants[0].epsilon", "finite"),
        ({"grants__0__epsilon": -1.0}, "grants[0].epsilon", "negative"),
        ({"grants__0__epsilon": _DELETE}, "grants[0].epsilon", "required"),
        ({"grants__0__delta": _DELETE}, "grants[0].delta", "required"),
        ({"grants__0__max_epsilon_per_query": 5.0}, "grants[0].max_epsilon_per_query", "exceed"),
        ({"grants__0__period": _DELETE}, "grants[0].period", "required"),
        ({"grants__0__period": "year"}, "grants[0].period", "must be one of"),
        ({"grants__0__period": "rolling"}, "grants[0].window_days", "required"),
        ({"grants__0__window_days": 7}, "grants[0].window_days", "only applies"),
        ({"grants__0__members__intern__epsilon": 4.0}, "grants[0].members.intern.epsilon", "exceed"),
        ({"grants__0__members__admin": {"epsilon": 1.0, "delta": 0.0}}, "grants[0].members.admin",
         "not a member"),
        ({"grants__0__organization": "nobody"}, "grants[0].organization", "unknown"),
        ({"grants__0__purpose": "fun"}, "grants[0].purpose", "undeclared"),
        ({"grants__0__colour": "red"}, "grants[0].colour", "unknown key"),
        ({"purposes__credit__price_per_epsilon": _DELETE}, "purposes.credit.price_per_epsilon", "required"),
        ({"purposes__credit__price_per_epsilon": -2.0}, "purposes.credit.price_per_epsilon", "negative"),
        ({"purposes__welfare__price_per_epsilon": 1.0}, "purposes.welfare.price_per_epsilon", "unknown key"),
        ({"purposes__credit__use_class": "charity"}, "purposes.credit.use_class", "must be one of"),
        ({"organizations__bank__members__analyst__roles": ["king"]},
         "organizations.bank.members.analyst.roles", "must be a non-empty list"),
        ({"organizations__ops__members__analyst": {"roles": ["operator"]}},
         "organizations.ops.members.analyst", "already a member"),
        ({"alerts": [{"rule": "refusal_burst", "count": 3}]}, "alerts[0].window_s", "required"),
        ({"alerts": [{"rule": "grant_near_exhaustion", "threshold": 1.5}]}, "alerts[0].threshold", "(0, 1]"),
        ({"extra": 1}, "extra", "unknown key"),
    ],
)
def test_every_field_is_validated(changes: dict[str, Any], key: str, problem: str) -> None:
    """Each invalid field raises ConfigError naming the file, the key and the problem."""
    with pytest.raises(ConfigError) as info:
        parse_governance(_doc(**changes), "op.toml")
    assert (info.value.file, info.value.key) == ("op.toml", key)
    assert problem in info.value.problem


def test_overrides_keep_the_invariants() -> None:
    """An adjustment below a member's budget, or a per-query max above the budget, is refused."""
    gov = parse_governance(_doc(), "op.toml")
    ok = gov.with_overrides({("bank", "registry", "credit"): GrantOverride(epsilon=6.0)})
    assert ok.as_policy().grant("analyst", "registry", "credit").epsilon == 6.0  # type: ignore[union-attr]
    with pytest.raises(ValueError, match=r"members\.intern"):
        gov.with_overrides({("bank", "registry", "credit"): GrantOverride(epsilon=0.9, max_epsilon_per_query=0.5)})
    with pytest.raises(ValueError, match="max_epsilon_per_query"):
        gov.with_overrides({("bank", "registry", "credit"): GrantOverride(max_epsilon_per_query=4.0)})


def test_broken_file_names_file_key_problem(tmp_path: Path) -> None:
    """load_policy reports file: key: problem for a v2 file."""
    f = tmp_path / "op.toml"
    f.write_text(BASE.replace("epsilon = 3.0", "epsilon = nan"))
    with pytest.raises(ConfigError, match=r"op.toml: grants\[0\].epsilon: must be finite"):
        load_policy(f)
