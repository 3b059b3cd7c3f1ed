"""Verification caps in SQLite: charge order within and across requests, both code paths, probing alerts."""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

from gateway.verification_state import VerificationState


def _h(x: str) -> str:
    return hashlib.sha256(x.encode()).hexdigest()


POLICY = SimpleNamespace(period="day", max_checks_per_consumer_per_period=1000,
                         alert_distinct_parameters_per_subject=3)
GRANT = SimpleNamespace(dataset="registry", template="t", max_checks_per_period=1000,
                        max_checks_per_subject_per_period=3)
NOW = 1_790_000_000.0


def _charge(state: VerificationState, subjects: list[str], params: list[str], **kw: object) -> list[str | None]:
    args = {"consumer": "c", "grant": GRANT, "policy": POLICY, "case_references": None, "now": NOW, **kw}
    return state.charge(subjects=[_h(s) for s in subjects], params=[_h(p) for p in params], **args)  # type: ignore[arg-type]


def test_caps_in_claim_order_across_requests(tmp_path: Path) -> None:
    """A subject gets exactly its cap: within one request (the sequential path) and across requests
    (the bulk path, then the sequential path); refused claims are not charged."""
    state = VerificationState(tmp_path / "v.sqlite3")
    assert _charge(state, ["a", "b"], ["p", "p"]) == [None, None]  # bulk path: no cap binds
    out = _charge(state, ["a", "b", "a", "a", "b", "c"], ["p", "q", "p", "q", "p", "p"])
    assert out == [None, None, None, "subject", None, None]  # a: 1 + 2 = 3, then refused
    assert _charge(state, ["b", "c"], ["p", "p"]) == ["subject", None]


def test_consumer_and_template_caps(tmp_path: Path) -> None:
    """The consumer's and the template's caps of the period refuse with their own names."""
    state = VerificationState(tmp_path / "v.sqlite3")
    grant = SimpleNamespace(**{**vars(GRANT), "max_checks_per_period": 2})
    assert _charge(state, ["a", "b", "c"], ["p"] * 3, grant=grant) == [None, None, "template"]
    policy = SimpleNamespace(**{**vars(POLICY), "max_checks_per_consumer_per_period": 3})
    assert _charge(state, ["d", "e"], ["p"] * 2, policy=policy) == [None, "consumer"]


def test_parameter_probe_alert_counts_distinct_sets_once(tmp_path: Path) -> None:
    """Three distinct parameter sets on one subject raise one alert when the third appears, whether they
    come in one request or several; repeating a set does not count."""
    state = VerificationState(tmp_path / "v.sqlite3")
    grant = SimpleNamespace(**{**vars(GRANT), "max_checks_per_subject_per_period": 100})
    _charge(state, ["a", "a", "a"], ["p", "q", "p"], grant=grant)
    assert state.alerts() == []
    _charge(state, ["a", "b"], ["q", "p"], grant=grant)
    assert state.alerts() == []
    _charge(state, ["a", "a"], ["r", "s"], grant=grant)
    alerts = state.alerts()
    assert [(a.kind, a.subject, a.count) for a in alerts] == [("parameter_probe", _h("a"), 4)]
