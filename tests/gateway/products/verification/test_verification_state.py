"""Verification caps in SQLite and PostgreSQL: charge order within and across requests, both code paths,
probing alerts."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

from gateway.products.verification.state import VerificationState
from gateway.storage.pg import PgDatabase


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


def test_caps_in_claim_order_across_requests(storage: Callable[[str], Path | PgDatabase]) -> None:
    """A subject gets exactly its cap: within one request (the sequential path) and across requests
    (the bulk path, then the sequential path); refused claims are not charged."""
    state = VerificationState(storage("v.sqlite3"))
    assert _charge(state, ["a", "b"], ["p", "p"]) == [None, None]  # bulk path: no cap binds
    out = _charge(state, ["a", "b", "a", "a", "b", "c"], ["p", "q", "p", "q", "p", "p"])
    assert out == [None, None, None, "subject", None, None]  # a: 1 + 2 = 3, then refused
    assert _charge(state, ["b", "c"], ["p", "p"]) == ["subject", None]


def test_consumer_and_template_caps(storage: Callable[[str], Path | PgDatabase]) -> None:
    """The consumer's and the template's caps of the period refuse with their own names."""
    state = VerificationState(storage("v.sqlite3"))
    grant = SimpleNamespace(**{**vars(GRANT), "max_checks_per_period": 2})
    assert _charge(state, ["a", "b", "c"], ["p"] * 3, grant=grant) == [None, None, "template"]
    policy = SimpleNamespace(**{**vars(POLICY), "max_checks_per_consumer_per_period": 3})
    assert _charge(state, ["d", "e"], ["p"] * 2, policy=policy) == [None, "consumer"]


def test_parameter_probe_alert_counts_distinct_sets_once(storage: Callable[[str], Path | PgDatabase]) -> None:
    """Three distinct parameter sets on one subject raise one alert when the third appears, whether they
    come in one request or several; repeating a set does not count."""
    state = VerificationState(storage("v.sqlite3"))
    grant = SimpleNamespace(**{**vars(GRANT), "max_checks_per_subject_per_period": 100})
    _charge(state, ["a", "a", "a"], ["p", "q", "p"], grant=grant)
    assert state.alerts() == []
    _charge(state, ["a", "b"], ["q", "p"], grant=grant)
    assert state.alerts() == []
    _charge(state, ["a", "a"], ["r", "s"], grant=grant)
    alerts = state.alerts()
    assert [(a.kind, a.subject, a.count) for a in alerts] == [("parameter_probe", _h("a"), 4)]


def _counters(state: VerificationState) -> tuple[list[tuple[object, ...]], ...]:
    con = state._open()
    return tuple(con.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
                 for t in ("consumer_counts", "template_counts"))


def _subjects(state: VerificationState) -> dict[tuple[str, str], int]:
    """(consumer, subject) -> checks charged (rows at zero left out)."""
    rows = state._open().execute("SELECT c.consumer, s.subject, s.n FROM subject_caps s JOIN cap_scopes c "
                                 "ON c.id = s.scope WHERE s.n > 0").fetchall()
    return {(c, s): n for c, s, n in rows}


def test_refund_gives_back_exactly_one_charge(storage: Callable[[str], Path | PgDatabase]) -> None:
    """A refund undoes one charge exactly -- including a charge a cap cut short and the case references it
    stored -- while another consumer's and another request's charges made in between stay; the claims it
    gave back can be charged again (also after reopening the database)."""
    state = VerificationState(storage("v.sqlite3"))
    args = {"grant": GRANT, "policy": POLICY, "now": NOW}
    _charge(state, ["a", "b"], ["p", "p"], case_references=["r1", "r2"])
    before, subjects_before = _counters(state), _subjects(state)
    refs_before = state.case_reference_count()
    out, taken = state.charge_refundable(consumer="c", subjects=[_h(s) for s in "aaab"], params=[_h("p")] * 4,
                                         case_references=["x", "y", "z", "w"], **args)  # type: ignore[arg-type]
    assert out == [None, None, "subject", None] and taken.claims == 3
    _charge(state, ["a"], ["p"], consumer="other")  # in between: stays
    state.refund(taken)
    after = _counters(state)
    assert [r for r in after[0] if r[1] == "c"] == [r for r in before[0] if r[1] == "c"]
    assert [r for r in after[1] if r[1] == "c"] == [r for r in before[1] if r[1] == "c"]
    assert any(r[1] == "other" and r[2] == 1 for r in after[0])
    assert subjects_before == {("c", _h("a")[:32]): 1, ("c", _h("b")[:32]): 1}  # the stored key: 16 bytes
    assert _subjects(state) == {**subjects_before, ("other", _h("a")[:32]): 1}
    assert state.case_reference_count() == refs_before
    reopened = VerificationState(storage("v.sqlite3"))
    assert _counters(reopened) == after
    assert _charge(reopened, ["a", "a"], ["p", "p"]) == [None, None]  # a: 1 charged + 2 = its cap of 3
    assert _charge(reopened, ["a"], ["p"]) == ["subject"]
