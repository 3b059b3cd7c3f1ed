"""Product grants of the operator policy: verification templates and models (the query grants are `[[grants]]`).

Parsed with the rest of the policy file (`gateway.policy.policy.load_policy`), so one reload swaps every grant at
once and every request reads them from the same policy snapshot.

    [verification]                                  # optional; these are the defaults
    period = "day"                                  # cap period: "day" or "hour" (UTC)
    max_checks_per_consumer_per_period = 100000     # all templates of one consumer together
    alert_not_found_per_window = 50                 # alert: this many unknown subjects ...
    alert_window_seconds = 3600                     # ... from one consumer within this window
    alert_distinct_parameters_per_subject = 3       # alert: this many parameter sets on one subject
    cap_durability = "full"                         # "normal": caps survive a crash, not a power loss

    [[verification_grants]]
    consumer = "acme-bank-analyst"
    dataset = "registry"
    template = "income_at_least"
    purpose = "loan-application"
    max_checks_per_period = 10000                   # this consumer x template
    max_checks_per_subject_per_period = 3           # this consumer x template x subject

    [[model_grants]]
    consumer = "acme-bank-analyst"
    dataset = "registry"
    purpose = "credit-risk"                         # models spend the organisation's grant for this
    table = "residents"                             # (dataset, purpose), like queries
    features = ["birth_year", "employed", "sex", "region"]
    labels = ["income", "employed"]
    max_epsilon_per_request = 2.0
    epsilon = 5.0                                   # optional: the most models may spend of that grant
    delta = 1e-5                                    # per period (with epsilon)

A model grant says what one consumer may train and evaluate; its privacy loss is charged to the
organisation's grant for the same dataset and purpose (member, organisation and the data owner's cap,
in that grant's period), so queries and models share one budget. `epsilon`/`delta`, when given, cap
the part of it that models may spend.
"""

from __future__ import annotations

import math
from collections.abc import Set
from dataclasses import dataclass
from typing import Any

from gateway.errors import ConfigError

__all__ = [
    "ModelGrant",
    "VerificationGrant",
    "VerificationPolicy",
    "parse_model_grants",
    "parse_verification_policy",
]

PRODUCT_KEYS = ("verification", "verification_grants", "model_grants")


@dataclass(frozen=True, slots=True)
class VerificationGrant:
    """A consumer may run one template of one dataset for one purpose, within caps."""

    consumer: str
    dataset: str
    template: str
    purpose: str
    max_checks_per_period: int
    max_checks_per_subject_per_period: int


@dataclass(frozen=True, slots=True)
class VerificationPolicy:
    """The operator's verification settings and grants."""

    grants: tuple[VerificationGrant, ...] = ()
    period: str = "day"
    max_checks_per_consumer_per_period: int = 100_000
    alert_not_found_per_window: int = 50
    alert_window_seconds: int = 3600
    alert_distinct_parameters_per_subject: int = 3
    cap_durability: str = "full"

    def grant(self, consumer: str, dataset: str, template: str, purpose: str) -> VerificationGrant | None:
        """The grant for exactly this combination, or None."""
        for g in self.grants:
            if (g.consumer, g.dataset, g.template, g.purpose) == (consumer, dataset, template, purpose):
                return g
        return None


@dataclass(frozen=True, slots=True)
class ModelGrant:
    """What one consumer may train and evaluate on one table, and the most models may spend per period."""

    consumer: str
    dataset: str
    purpose: str
    table: str
    features: frozenset[str]
    labels: frozenset[str]
    max_epsilon_per_request: float
    epsilon: float | None = None  # None: no model-specific limit inside the organisation's grant
    delta: float = 0.0


def _positive_int(file: str, key: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ConfigError(file, key, "must be an integer >= 1")
    return v


def _num(file: str, key: str, v: Any, *, positive: bool, below_one: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0:
        raise ConfigError(file, key, f"must be a finite non-negative number, got {v!r}")
    if positive and v <= 0:
        raise ConfigError(file, key, f"must be positive, got {v!r}")
    if below_one and v >= 1:
        raise ConfigError(file, key, f"must be below 1, got {v!r}")
    return float(v)


def _table_list(data: dict[str, Any], file: str, key: str) -> list[Any]:
    raw = data.get(key, [])
    if not isinstance(raw, list):
        raise ConfigError(file, key, f"must be an array of tables ([[{key}]])")
    return raw


def _keys(file: str, prefix: str, g: Any, allowed: set[str], optional: set[str]) -> dict[str, Any]:
    if not isinstance(g, dict):
        raise ConfigError(file, prefix.rstrip("."), "must be a table")
    for k in g:
        if k not in allowed:
            raise ConfigError(file, prefix + k, f"unknown key (allowed: {', '.join(sorted(allowed))})")
    for k in sorted(allowed - optional):
        if k not in g:
            raise ConfigError(file, prefix + k, "is required")
    return g


def _names(file: str, prefix: str, g: dict[str, Any], keys: tuple[str, ...]) -> None:
    for k in keys:
        if not isinstance(g[k], str) or not g[k]:
            raise ConfigError(file, prefix + k, "must be a non-empty string")


def parse_verification_policy(data: dict[str, Any], file: str, consumers: Set[str]) -> VerificationPolicy:
    """Validate the `[verification]` table and `[[verification_grants]]` of a parsed operator policy.

    Raises:
        ConfigError: names the file, the key and the problem.
    """
    settings = data.get("verification", {})
    if not isinstance(settings, dict):
        raise ConfigError(file, "verification", "must be a table")
    defaults = VerificationPolicy()
    allowed = {"period", "max_checks_per_consumer_per_period", "alert_not_found_per_window",
               "alert_window_seconds", "alert_distinct_parameters_per_subject", "cap_durability"}
    for k in settings:
        if k not in allowed:
            raise ConfigError(file, f"verification.{k}", f"unknown key (allowed: {', '.join(sorted(allowed))})")
    period = settings.get("period", defaults.period)
    if period not in ("day", "hour"):
        raise ConfigError(file, "verification.period", "must be 'day' or 'hour'")
    durability = settings.get("cap_durability", defaults.cap_durability)
    if durability not in ("full", "normal"):
        raise ConfigError(file, "verification.cap_durability", "must be 'full' or 'normal'")
    ints = {k: _positive_int(file, f"verification.{k}", settings.get(k, getattr(defaults, k)))
            for k in sorted(allowed - {"period", "cap_durability"})}
    grants: list[VerificationGrant] = []
    seen: set[tuple[str, str, str, str]] = set()
    keys = {"consumer", "dataset", "template", "purpose", "max_checks_per_period",
            "max_checks_per_subject_per_period", "description"}
    for i, raw in enumerate(_table_list(data, file, "verification_grants")):
        prefix = f"verification_grants[{i}]."
        g = _keys(file, prefix, raw, keys, {"description"})
        _names(file, prefix, g, ("consumer", "dataset", "template", "purpose"))
        if g["consumer"] not in consumers:
            raise ConfigError(file, prefix + "consumer", f"unknown consumer {g['consumer']!r}")
        grant = VerificationGrant(
            g["consumer"], g["dataset"], g["template"], g["purpose"],
            _positive_int(file, prefix + "max_checks_per_period", g["max_checks_per_period"]),
            _positive_int(file, prefix + "max_checks_per_subject_per_period",
                          g["max_checks_per_subject_per_period"]),
        )
        key = (grant.consumer, grant.dataset, grant.template, grant.purpose)
        if key in seen:
            raise ConfigError(file, f"verification_grants[{i}]", f"duplicate grant for {key}")
        seen.add(key)
        grants.append(grant)
    return VerificationPolicy(tuple(grants), period, cap_durability=durability, **ints)


def parse_model_grants(data: dict[str, Any], file: str, consumers: Set[str]) -> tuple[ModelGrant, ...]:
    """Validate the `[[model_grants]]` of a parsed operator policy (absent: none).

    Raises:
        ConfigError: names the file, the key and the problem.
    """
    keys = {"consumer", "dataset", "purpose", "table", "features", "labels", "epsilon", "delta",
            "max_epsilon_per_request", "description"}
    out: list[ModelGrant] = []
    seen: set[tuple[str, str, str]] = set()
    for i, raw in enumerate(_table_list(data, file, "model_grants")):
        prefix = f"model_grants[{i}]."
        g = _keys(file, prefix, raw, keys, {"description", "epsilon", "delta"})
        _names(file, prefix, g, ("consumer", "dataset", "purpose", "table"))
        if g["consumer"] not in consumers:
            raise ConfigError(file, prefix + "consumer", f"unknown consumer {g['consumer']!r}")
        for k in ("features", "labels"):
            if not isinstance(g[k], list) or not g[k] or not all(isinstance(x, str) for x in g[k]):
                raise ConfigError(file, prefix + k, "must be a non-empty list of column names")
        if "delta" in g and "epsilon" not in g:
            raise ConfigError(file, prefix + "delta", "is only allowed with epsilon (the models' limit)")
        epsilon = _num(file, prefix + "epsilon", g["epsilon"], positive=True) if "epsilon" in g else None
        grant = ModelGrant(
            g["consumer"], g["dataset"], g["purpose"], g["table"], frozenset(g["features"]),
            frozenset(g["labels"]),
            _num(file, prefix + "max_epsilon_per_request", g["max_epsilon_per_request"], positive=True),
            epsilon,
            _num(file, prefix + "delta", g.get("delta", 0.0), positive=False, below_one=True),
        )
        if epsilon is not None and grant.max_epsilon_per_request > epsilon:
            raise ConfigError(file, prefix + "max_epsilon_per_request", "must not exceed epsilon")
        key = (grant.consumer, grant.dataset, grant.purpose)
        if key in seen:
            raise ConfigError(file, f"model_grants[{i}]", f"duplicate model grant for {key}")
        seen.add(key)
        out.append(grant)
    return tuple(out)
