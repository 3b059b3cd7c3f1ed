"""Reading the operator's policy file (`load_policy`): version 2 (`gateway.policy.governance`), or version 1 converted.

Version 1 names which consumers (certificate identities) may spend what, on which dataset and purpose.

Format (TOML, `schema = "privacy_gateway.operator.v1"`), complete example in `policies/operator.toml`:

    [consumers.acme-bank-analyst]          # the consumer's certificate common name
    organization = "ACME Bank"

    [[grants]]
    consumer = "acme-bank-analyst"
    dataset = "registry"
    purpose = "credit-risk"
    privacy_definition = "pure_dp"         # or "approx_dp" (epsilon, delta > 0): allows DP
                                           # partition selection of private group keys
    epsilon = 10.0                         # total budget of the grant
    delta = 0.0
    max_epsilon_per_query = 1.0

    [[grants]]                             # a zCDP grant: Gaussian-family releases, accounted in rho
    consumer = "acme-bank-analyst"
    dataset = "registry"
    purpose = "research"
    privacy_definition = "zcdp"
    rho = 0.5                              # total budget of the grant, in rho (sum over releases)
    delta = 1e-6                           # > 0: the delta the spending is reported at as (epsilon, delta)
    max_rho_per_query = 0.05

Privacy-relevant numbers have no defaults. Every problem raises ConfigError naming the file, the key and
the problem; the loaded policy is frozen.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError
from gateway.policy import governance
from gateway.policy.grants import PRODUCT_KEYS, parse_model_grants, parse_verification_policy
from gateway.policy.model import SCHEMA_V2, ZCDP, Consumer, Governance, Grant, Policy, zcdp_equivalent

__all__ = ["SCHEMA", "load_policy", "parse_policy"]

SCHEMA = "privacy_gateway.operator.v1"
PRIVACY_DEFINITIONS = frozenset({"pure_dp", "approx_dp", "zcdp"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _number(file: str, key: str, value: Any, *, positive: bool, below_one: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(file, key, f"must be a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise ConfigError(file, key, f"must be finite, got {value!r}")
    if positive and v <= 0:
        raise ConfigError(file, key, f"must be positive, got {value!r}")
    if v < 0:
        raise ConfigError(file, key, f"must not be negative, got {value!r}")
    if below_one and v >= 1:
        raise ConfigError(file, key, f"must be below 1, got {value!r}")
    return v


def _string(file: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ConfigError(
            file, key, "must be a name of letters, digits, '.', '_' or '-' (at most 128 characters)"
        )
    return value


def _check_keys(file: str, prefix: str, table: dict[str, Any], allowed: set[str]) -> None:
    for k in table:
        if k not in allowed:
            raise ConfigError(file, f"{prefix}{k}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
    for k in allowed:
        if k not in table and k not in ("description",):
            raise ConfigError(file, f"{prefix}{k}", "is required")


def parse_policy(data: dict[str, Any], file: str) -> Policy:
    """Validate a parsed TOML document as an operator policy (v2, or v1 converted to v2), with its product
    grants (`gateway.policy.grants`)."""
    products = {k: data[k] for k in PRODUCT_KEYS if k in data}
    data = {k: v for k, v in data.items() if k not in PRODUCT_KEYS}
    if data.get("schema") == SCHEMA_V2:
        gov = governance.parse_governance(data, file)
        return _with_products(gov, products, file).as_policy()
    _check_keys(file, "", data, {"schema", "consumers", "grants"})
    if data["schema"] != SCHEMA:
        raise ConfigError(
            file, "schema", f"must be 'privacy_gateway.operator.v2' (or {SCHEMA!r}), got {data['schema']!r}"
        )
    raw_consumers = data["consumers"]
    if not isinstance(raw_consumers, dict):
        raise ConfigError(file, "consumers", "must be a table of consumers")
    consumers: dict[str, Consumer] = {}
    for identity, body in raw_consumers.items():
        prefix = f"consumers.{identity}."
        _string(file, f"consumers.{identity}", identity)
        if not isinstance(body, dict):
            raise ConfigError(file, f"consumers.{identity}", "must be a table")
        _check_keys(file, prefix, body, {"organization", "description"})
        if not isinstance(body["organization"], str) or not body["organization"].strip():
            raise ConfigError(file, prefix + "organization", "must be a non-empty string")
        consumers[identity] = Consumer(identity, body["organization"], str(body.get("description", "")))
    raw_grants = data["grants"]
    if not isinstance(raw_grants, list):
        raise ConfigError(file, "grants", "must be an array of tables ([[grants]])")
    grants: list[Grant] = []
    seen: set[tuple[str, str, str]] = set()
    for i, g in enumerate(raw_grants):
        prefix = f"grants[{i}]."
        if not isinstance(g, dict):
            raise ConfigError(file, f"grants[{i}]", "must be a table")
        definition = g.get("privacy_definition")
        if not isinstance(definition, str) or definition not in PRIVACY_DEFINITIONS:
            _check_keys(file, prefix, {k: v for k, v in g.items() if k == "privacy_definition"},
                        {"privacy_definition"})
            raise ConfigError(
                file, prefix + "privacy_definition",
                f"must be one of {sorted(PRIVACY_DEFINITIONS)}, got {definition!r}",
            )
        if definition == ZCDP:
            _check_keys(file, prefix, g, {"consumer", "dataset", "purpose", "privacy_definition", "rho",
                                          "delta", "max_rho_per_query", "description"})
        else:
            _check_keys(
                file,
                prefix,
                g,
                {"consumer", "dataset", "purpose", "privacy_definition", "epsilon", "delta",
                 "max_epsilon_per_query", "description"},
            )
        consumer = _string(file, prefix + "consumer", g["consumer"])
        if consumer not in consumers:
            raise ConfigError(file, prefix + "consumer", f"unknown consumer {consumer!r}")
        if definition == ZCDP:
            grant = _zcdp_grant(file, prefix, g, consumer)
        else:
            grant = Grant(
                consumer=consumer,
                dataset=_string(file, prefix + "dataset", g["dataset"]),
                purpose=_string(file, prefix + "purpose", g["purpose"]),
                privacy_definition=definition,
                epsilon=_number(file, prefix + "epsilon", g["epsilon"], positive=True),
                delta=_number(file, prefix + "delta", g["delta"], positive=False, below_one=True),
                max_epsilon_per_query=_number(
                    file, prefix + "max_epsilon_per_query", g["max_epsilon_per_query"], positive=True
                ),
            )
        if grant.max_epsilon_per_query > grant.epsilon:
            raise ConfigError(file, prefix + "max_epsilon_per_query", "must not exceed epsilon")
        if grant.privacy_definition == "pure_dp" and grant.delta != 0:
            raise ConfigError(file, prefix + "delta", "must be 0 for privacy_definition 'pure_dp'")
        if grant.privacy_definition == "approx_dp" and grant.delta <= 0:
            raise ConfigError(
                file, prefix + "delta", "must be positive for privacy_definition 'approx_dp'"
            )
        key = (grant.consumer, grant.dataset, grant.purpose)
        if key in seen:
            raise ConfigError(file, f"grants[{i}]", f"duplicate grant for {key}")
        seen.add(key)
        grants.append(grant)
    v1 = Policy(consumers=consumers, grants=tuple(grants), source=file)
    return dataclasses.replace(v1, governance=_with_products(governance.from_v1(v1), products, file))


def _with_products(gov: Governance, products: dict[str, Any], file: str) -> Governance:
    """`gov` with its verification and model grants; a model grant needs its organisation's grant."""
    consumers = {m.identity for m in gov.members.values() if "consumer" in m.roles}
    models = parse_model_grants(products, file, consumers)
    for i, g in enumerate(models):
        org = gov.members[g.consumer].organization
        if gov.org_grant(org, g.dataset, g.purpose) is None:
            raise ConfigError(file, f"model_grants[{i}]",
                              f"organisation {org!r} has no grant for dataset {g.dataset!r} and purpose "
                              f"{g.purpose!r}; models spend that grant")
    return dataclasses.replace(gov, verification=parse_verification_policy(products, file, consumers),
                               model_grants=models)


def _zcdp_grant(file: str, prefix: str, g: dict[str, Any], consumer: str) -> Grant:
    """A v1 zCDP grant: rho, delta (> 0, the reporting delta) and max_rho_per_query."""
    rho = _number(file, prefix + "rho", g["rho"], positive=True)
    delta = _number(file, prefix + "delta", g["delta"], positive=False, below_one=True)
    if delta <= 0:
        raise ConfigError(file, prefix + "delta",
                          "must be positive for privacy_definition 'zcdp' (spending is reported as (epsilon, delta))")
    max_rho = _number(file, prefix + "max_rho_per_query", g["max_rho_per_query"], positive=True)
    if max_rho > rho:
        raise ConfigError(file, prefix + "max_rho_per_query", "must not exceed rho")
    return Grant(
        consumer=consumer,
        dataset=_string(file, prefix + "dataset", g["dataset"]),
        purpose=_string(file, prefix + "purpose", g["purpose"]),
        privacy_definition=ZCDP,
        epsilon=zcdp_equivalent(rho, delta),
        delta=delta,
        max_epsilon_per_query=zcdp_equivalent(max_rho, delta),
        rho=rho,
        max_rho_per_query=max_rho,
    )


def load_policy(path: Path) -> Policy:
    """Read and validate an operator policy file.

    Raises:
        ConfigError: the file is missing, not TOML, or invalid; the message names file, key and problem.
    """
    file = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(file, "-", "file not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(file, "-", f"not valid TOML: {exc}") from exc
    return parse_policy(data, file)
