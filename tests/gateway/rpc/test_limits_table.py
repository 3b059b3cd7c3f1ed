"""The request limits (`gateway.rpc.limits`): every field has one, the README lists them all, the walker refuses
exactly what is over them; errors stay small whatever raised them; the verification state's writers queue
fairly and a state that cannot be written is UNAVAILABLE, never a bare SQLite error."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import query_service_pb2 as q_pb
from privacy_gateway.v1 import verification_service_pb2 as v_pb

from gateway.errors import GatewayError, InvalidArgumentError, PermissionDeniedError, StateUnavailableError
from gateway.products.verification.state import FairLock, VerificationState
from gateway.release.digests import digest_text
from gateway.rpc import limits
from gateway.rpc.status import MAX_MESSAGE_CHARS, MAX_METADATA_CHARS, status_for, trailing_metadata
from gateway.settings import ROOT
from sandbox.pricing import mechanisms
from sandbox.protocol.messages import ReleaseCost

README = (ROOT / "docs" / "reference.md").read_text()  # the reference the README points to


def test_every_request_field_has_a_limit() -> None:
    """Each field of each request message of `proto/` has an entry, and no entry names a field that is gone."""
    fields = {limits._key(fd) for fd in limits.request_fields()}
    assert fields == set(limits.LIMITS)


def test_the_readme_lists_every_limit() -> None:
    """The README's limits table is the module's table, row for row."""
    assert limits.markdown_table() in README
    for key in limits.LIMITS:
        assert f"| `{key}` |" in README, key


def _refusal(message: object) -> InvalidArgumentError:
    with pytest.raises(InvalidArgumentError) as info:
        limits.check_request(message)
    return info.value


def test_text_at_its_limit_passes_and_one_more_character_is_refused() -> None:
    ok = q_pb.RunQueryRequest(dataset="d" * limits.NAME_CHARS, sql="s" * limits.SQL_CHARS)
    limits.check_request(ok)
    err = _refusal(q_pb.RunQueryRequest(dataset="\u4e2d" * (limits.NAME_CHARS + 1)))  # counted in characters
    assert (err.reason, err.metadata) == ("FIELD_TOO_LONG", {"field": "dataset", "limit": "128", "size": "129"})
    assert "\u4e2d" not in err.message


@given(st.text(st.characters(blacklist_categories=("Cs",)), min_size=limits.NAME_CHARS + 1, max_size=400))
@settings(max_examples=50, database=None, derandomize=True)
def test_no_refusal_echoes_a_value(value: str) -> None:
    """Whatever the oversized text, the refusal names the field and sizes, never the text."""
    for request in (q_pb.RunQueryRequest(purpose=value), q_pb.RunQueryRequest(weights={value: 1.0}),
                    v_pb.VerifyRequest(parameters={"name": v_pb.ParamValue(string_value=value * 8)})):
        err = _refusal(request)
        assert err.reason == "FIELD_TOO_LONG"
        assert value not in err.message and all(value not in v for v in err.metadata.values())


@pytest.mark.parametrize(("loss", "field"), [
    ({"epsilon": float("nan")}, "privacy_loss.epsilon"), ({"epsilon": -1.0}, "privacy_loss.epsilon"),
    ({"epsilon": 2e6}, "privacy_loss.epsilon"), ({"delta": 1.0}, "privacy_loss.delta"),
    ({"rho": float("inf")}, "privacy_loss.rho"),
])
def test_privacy_loss_out_of_range_keeps_its_reason(loss: dict[str, float], field: str) -> None:
    err = _refusal(q_pb.RunQueryRequest(privacy_loss=common_pb.PrivacyLoss(**loss)))
    assert (err.reason, err.metadata["field"]) == ("INVALID_PRIVACY_LOSS", field)


def test_maps_are_bounded_in_entries_keys_and_values() -> None:
    many = {f"o{i}": 1.0 for i in range(limits.MAX_OUTPUT_ENTRIES + 1)}
    assert _refusal(q_pb.RunQueryRequest(weights=many)).metadata == {
        "field": "weights", "limit": "256", "size": "257"}
    assert _refusal(q_pb.RunQueryRequest(interval_shares={"m": 1.0})).reason == "INVALID_INTERVAL_SHARE"
    err = _refusal(q_pb.RunQueryRequest(accuracy=q_pb.AccuracyTarget(per_output={"n": -1.0})))
    assert (err.reason, err.metadata["field"]) == ("INVALID_ACCURACY_TARGET", "accuracy.per_output[n]")


def test_malformed_bodies_become_a_refusal() -> None:
    parse = limits.lenient(q_pb.RunQueryRequest.FromString)
    assert parse is not None
    good = q_pb.RunQueryRequest(dataset="registry")
    assert parse(good.SerializeToString()) == good
    bad = parse(b"\xff\xff\xff")
    assert bad == limits.MalformedMessage(3)
    assert _refusal(bad).reason == "MALFORMED_MESSAGE"
    assert limits.lenient(None) is None


def test_claims_are_checked_column_wise_naming_the_claim() -> None:
    limits.check_claims(["1" * 18] * 3, ["", "r" * limits.CASE_REFERENCE_CHARS, ""])
    with pytest.raises(InvalidArgumentError) as info:
        limits.check_claims(["1" * 18, "2" * 65], ["", ""], offset=10)
    assert info.value.metadata == {"field": "claims[11].subject", "limit": "64", "size": "65"}
    with pytest.raises(InvalidArgumentError) as info:
        limits.check_claim_parameters(4, {f"p{i}": 1 for i in range(limits.MAX_PARAMETERS + 1)})
    assert info.value.metadata["field"] == "claims[4].parameters"
    with pytest.raises(InvalidArgumentError) as info:
        limits.check_claim_parameters(5, {"name": "x" * (limits.PARAM_STRING_CHARS + 1)})
    assert info.value.metadata["field"] == "claims[5].parameters[name].string_value"


def test_an_unanswered_calls_text_is_kept_as_digest_and_size() -> None:
    text = "SELECT COUNT(*) FROM residents WHERE id_number = '11010519491231002X'"
    kept = digest_text(text)
    assert kept == f"sha256={hashlib.sha256(text.encode()).hexdigest()} chars={len(text)}"
    assert digest_text("") == ""


def test_every_error_leaves_small_whatever_raised_it() -> None:
    """Trailing metadata over gRPC's limit turned a refusal into RESOURCE_EXHAUSTED; a status is bounded."""
    err = PermissionDeniedError("no grant for " + "d" * 100_000, dataset="d" * 100_000,
                                **{f"k{i}": "v" * 1000 for i in range(50)})
    status = status_for(err)
    assert len(status.message) <= MAX_MESSAGE_CHARS
    size = sum(len(v) for _, v in trailing_metadata(status))
    assert size < 8 * 1024
    assert status.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert MAX_METADATA_CHARS < 1000


def test_the_discrete_laplace_stddev_is_finite_at_any_finite_scale() -> None:
    """At scale ~2e18 (the smallest epsilon, split 1e6 : 1) 1 - exp(-1/s) was 0: ZeroDivisionError after
    the data was touched."""
    for scale in (1.0, 1e8, 2e18, 1e300):
        cost = ReleaseCost(0, "sum", mechanisms.DISCRETE_LAPLACE, 1.0, scale, 1.0 / scale)
        sd = mechanisms.stddev(cost)
        assert sd > 0 and sd != float("inf")
        if scale >= 1e8:
            assert sd == pytest.approx(2**0.5 * scale, rel=1e-6)


# -- the verification state --------------------------------------------------------------------------------


def test_fair_lock_serves_waiters_in_arrival_order_and_times_out() -> None:
    lock = FairLock()
    assert lock.acquire(1.0)
    order: list[int] = []

    def waiter(i: int) -> None:
        assert lock.acquire(10.0)
        order.append(i)
        lock.release()

    threads = []
    for i in range(8):
        t = threading.Thread(target=waiter, args=(i,))
        t.start()
        threads.append(t)
        time.sleep(0.02)  # arrive in order
    assert not lock.acquire(0.05)  # queued behind eight, it gives up, and leaves the queue
    lock.release()
    for t in threads:
        t.join()
    assert order == list(range(8))
    assert lock.acquire(0.0)
    lock.release()


POLICY = SimpleNamespace(period="day", max_checks_per_consumer_per_period=10**9,
                         alert_distinct_parameters_per_subject=3)
GRANT = SimpleNamespace(dataset="registry", template="t", max_checks_per_period=10**9,
                        max_checks_per_subject_per_period=1000)


def test_64_concurrent_writers_all_commit_or_get_state_unavailable(tmp_path: Path) -> None:
    """64 threads charging at once with a short busy timeout: each charge commits, or is refused as
    STATE_UNAVAILABLE (retryable, nothing charged); never a bare 'database is locked'."""
    state = VerificationState(tmp_path / "v.sqlite3", busy_timeout_s=5.0)
    outcomes: list[str] = []

    def work(i: int) -> None:
        subjects = [hashlib.sha256(f"{i}-{k}".encode()).hexdigest() for k in range(500)]
        try:
            state.charge(consumer=f"c{i % 4}", grant=GRANT, policy=POLICY, subjects=subjects,  # type: ignore[arg-type]
                         params=["ab" * 8] * len(subjects), case_references=None, now=1_790_000_000.0)
            outcomes.append("ok")
        except StateUnavailableError:
            outcomes.append("unavailable")
        except Exception as exc:  # the failure this test exists for
            outcomes.append(repr(exc))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(set(outcomes)) <= ["ok", "unavailable"], outcomes
    with sqlite3.connect(tmp_path / "v.sqlite3") as con:
        (n,) = con.execute("SELECT coalesce(sum(n), 0) FROM consumer_counts").fetchone()
    assert n == 500 * outcomes.count("ok")


def test_a_state_that_cannot_be_written_is_unavailable_with_retry(tmp_path: Path) -> None:
    """Another process holds the write lock past the busy timeout: STATE_UNAVAILABLE with RetryInfo."""
    path = tmp_path / "v.sqlite3"
    state = VerificationState(path, busy_timeout_s=0.2)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StateUnavailableError) as info:
            state.charge(consumer="c", grant=GRANT, policy=POLICY, subjects=["ab" * 16],  # type: ignore[arg-type]
                         params=["cd" * 8], case_references=None, now=1_790_000_000.0)
    finally:
        other.execute("ROLLBACK")
        other.close()
    err: GatewayError = info.value
    assert err.code == grpc.StatusCode.UNAVAILABLE and err.retry_after_s is not None
    assert state.charge(consumer="c", grant=GRANT, policy=POLICY, subjects=["ab" * 16],  # type: ignore[arg-type]
                        params=["cd" * 8], case_references=None, now=1_790_000_000.0) == [None]
