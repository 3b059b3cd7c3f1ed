"""Unit tests for gateway.budgets.ledger: exact accounting, idempotency, durability and concurrency."""

from __future__ import annotations

import itertools
import math
import multiprocessing
import sqlite3
import threading
from collections.abc import Callable
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier as ProcessBarrier
from pathlib import Path

import grpc
import pytest

from gateway.budgets.ledger import (
    ChargeRecord,
    GrantKey,
    Ledger,
    PriorRelease,
    PrivacyLoss,
    Reservation,
)
from gateway.errors import (
    GatewayInternalError,
    InvalidArgumentError,
    PrivacyBudgetExhaustedError,
    RequestIdConflictError,
    RequestInProgressError,
)
from gateway.storage.pg import PgDatabase, is_postgres_url
from gateway.storage.sqlite import open_location

KEY = GrantKey(consumer="alice", dataset="registry_a", purpose="research")
FP = "fingerprint-1"


@pytest.fixture
def ledger(storage: Callable[[str], Path | PgDatabase]) -> Ledger:
    """A fresh ledger on each backend (SQLite: in a nested state directory that does not exist yet)."""
    return Ledger(storage("state/nested/ledger.sqlite3"))


def _reserve(
    ledger: Ledger,
    request_id: str,
    cost: PrivacyLoss,
    budget: PrivacyLoss,
    *,
    key: GrantKey = KEY,
    fingerprint: str = FP,
) -> Reservation:
    outcome = ledger.reserve(
        key, request_id=request_id, fingerprint=fingerprint, cost=cost, budget=budget
    )
    assert isinstance(outcome, Reservation)
    return outcome


def test_privacy_loss_rejects_invalid_values() -> None:
    """PrivacyLoss refuses negative, non-finite and out-of-range values and normalizes to float."""
    invalid = [
        (-0.1, 0.0),
        (math.nan, 0.0),
        (math.inf, 0.0),
        (1.0, 1.0),
        (1.0, -1e-9),
        (1.0, math.nan),
    ]
    for epsilon, delta in invalid:
        with pytest.raises(ValueError):
            PrivacyLoss(epsilon, delta)
    with pytest.raises(ValueError):
        PrivacyLoss(True)
    loss = PrivacyLoss(1)
    assert isinstance(loss.epsilon, float)
    assert loss == PrivacyLoss(1.0, 0.0)


def test_epsilon_accounting_is_exact_and_refusal_charges_nothing(ledger: Ledger) -> None:
    """Three 0.25 charges fit a 1.0 budget; a 0.5 is refused and leaves spent at exactly 0.75."""
    budget = PrivacyLoss(1.0)
    for i in range(3):
        r = _reserve(ledger, f"r{i}", PrivacyLoss(0.25), budget)
        assert r.spent_after == PrivacyLoss(0.25 * (i + 1))
    assert ledger.spent(KEY) == PrivacyLoss(0.75, 0.0)

    with pytest.raises(PrivacyBudgetExhaustedError) as info:
        ledger.reserve(KEY, request_id="r3", fingerprint=FP, cost=PrivacyLoss(0.5), budget=budget)
    err = info.value
    assert err.reason == "PRIVACY_BUDGET_EXHAUSTED"
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.message == (
        "the request costs epsilon 0.5 but only 0.25 remains"
        " on dataset registry_a for purpose research"
    )
    assert err.metadata["requestedEpsilon"] == "0.5"
    assert err.metadata["remainingEpsilon"] == "0.25"
    assert err.metadata["requestedDelta"] == "0.0"
    assert err.metadata["remainingDelta"] == "0.0"

    assert ledger.spent(KEY) == PrivacyLoss(0.75, 0.0)
    assert [c.request_id for c in ledger.history(KEY)] == ["r0", "r1", "r2"]
    # The refused id was never written, so it is free for a request that fits.
    assert _reserve(ledger, "r3", PrivacyLoss(0.25), budget).spent_after == PrivacyLoss(1.0)
    ledger.verify()


def test_delta_accounting_is_exact_and_refusal_charges_nothing(ledger: Ledger) -> None:
    """Delta is budgeted like epsilon: three 2^-22 fit a 2^-20 budget, then 2^-21 is refused."""
    budget = PrivacyLoss(10.0, 2.0**-20)
    cost = PrivacyLoss(0.0, 2.0**-22)
    for i in range(3):
        _reserve(ledger, f"d{i}", cost, budget)
    assert ledger.spent(KEY) == PrivacyLoss(0.0, 3 * 2.0**-22)

    with pytest.raises(PrivacyBudgetExhaustedError) as info:
        ledger.reserve(
            KEY, request_id="d3", fingerprint=FP, cost=PrivacyLoss(0.0, 2.0**-21), budget=budget
        )
    err = info.value
    assert err.reason == "PRIVACY_BUDGET_EXHAUSTED"
    assert err.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.message.startswith(f"the request costs delta {2.0**-21!r} but only {2.0**-22!r}")
    assert err.metadata["requestedDelta"] == repr(2.0**-21)
    assert err.metadata["remainingDelta"] == repr(2.0**-22)
    assert ledger.spent(KEY) == PrivacyLoss(0.0, 3 * 2.0**-22)
    ledger.verify()


def test_retry_of_released_request_replays_the_stored_response(ledger: Ledger) -> None:
    """A retried id with the same fingerprint returns the stored release and charges nothing."""
    budget = PrivacyLoss(1.0)
    _reserve(ledger, "q1", PrivacyLoss(0.5), budget)
    ledger.complete(KEY, "q1", b"resp")

    again = ledger.reserve(
        KEY, request_id="q1", fingerprint=FP, cost=PrivacyLoss(0.5), budget=budget
    )
    assert again == PriorRelease(request_id="q1", response=b"resp")
    assert ledger.spent(KEY) == PrivacyLoss(0.5)
    # Replay works even when the budget is exhausted by now: the answer was already paid for.
    _reserve(ledger, "q2", PrivacyLoss(0.5), budget)
    replay = ledger.reserve(
        KEY, request_id="q1", fingerprint=FP, cost=PrivacyLoss(0.5), budget=budget
    )
    assert replay == PriorRelease(request_id="q1", response=b"resp")
    assert ledger.spent(KEY) == PrivacyLoss(1.0)
    ledger.verify()


def test_reused_request_id_with_different_request_conflicts(ledger: Ledger) -> None:
    """The same id with another fingerprint or another dataset is REQUEST_ID_REUSED, not charged."""
    budget = PrivacyLoss(1.0)
    _reserve(ledger, "q1", PrivacyLoss(0.25), budget)
    ledger.complete(KEY, "q1", b"resp")

    with pytest.raises(RequestIdConflictError) as info:
        ledger.reserve(
            KEY, request_id="q1", fingerprint="other", cost=PrivacyLoss(0.25), budget=budget
        )
    assert info.value.message == "request_id was already used for a different request"
    assert info.value.metadata == {"requestId": "q1"}
    assert info.value.reason == "REQUEST_ID_REUSED"
    assert info.value.code == grpc.StatusCode.ALREADY_EXISTS

    other_dataset = GrantKey(KEY.consumer, "registry_b", KEY.purpose)
    with pytest.raises(RequestIdConflictError):
        ledger.reserve(
            other_dataset, request_id="q1", fingerprint=FP, cost=PrivacyLoss(0.25), budget=budget
        )
    assert ledger.spent(KEY) == PrivacyLoss(0.25)
    assert ledger.spent(other_dataset) == PrivacyLoss(0.0)
    ledger.verify()


def test_request_ids_are_scoped_per_consumer(ledger: Ledger) -> None:
    """The same request id from two consumers is two independent requests and two charges."""
    budget = PrivacyLoss(1.0)
    bob = GrantKey("bob", KEY.dataset, KEY.purpose)
    _reserve(ledger, "shared-id", PrivacyLoss(0.25), budget)
    ledger.complete(KEY, "shared-id", b"alice's answer")

    r = _reserve(ledger, "shared-id", PrivacyLoss(0.5), budget, key=bob, fingerprint="bob-fp")
    assert r.spent_after == PrivacyLoss(0.5)
    assert ledger.spent(KEY) == PrivacyLoss(0.25)
    assert ledger.spent(bob) == PrivacyLoss(0.5)
    with pytest.raises(RequestInProgressError):
        ledger.reserve(
            bob, request_id="shared-id", fingerprint="bob-fp", cost=PrivacyLoss(0.5), budget=budget
        )
    ledger.verify()


def test_charged_but_uncompleted_request_cannot_be_retried(ledger: Ledger) -> None:
    """A reserved (running or crashed) or failed id is REQUEST_IN_PROGRESS and charges nothing."""
    budget = PrivacyLoss(1.0)
    _reserve(ledger, "q1", PrivacyLoss(0.25), budget)
    with pytest.raises(RequestInProgressError) as info:
        ledger.reserve(KEY, request_id="q1", fingerprint=FP, cost=PrivacyLoss(0.25), budget=budget)
    assert info.value.reason == "REQUEST_IN_PROGRESS"
    assert info.value.code == grpc.StatusCode.ABORTED
    assert info.value.metadata["requestId"] == "q1"
    assert "new request_id" in info.value.message

    ledger.fail(KEY, "q1")
    with pytest.raises(RequestInProgressError):
        ledger.reserve(KEY, request_id="q1", fingerprint=FP, cost=PrivacyLoss(0.25), budget=budget)
    assert ledger.spent(KEY) == PrivacyLoss(0.25)
    ledger.verify()


def test_fail_keeps_the_charge(ledger: Ledger) -> None:
    """A failure after the data was touched stays charged and is recorded as failed."""
    budget = PrivacyLoss(1.0)
    _reserve(ledger, "q1", PrivacyLoss(0.75), budget)
    ledger.fail(KEY, "q1")
    assert ledger.spent(KEY) == PrivacyLoss(0.75)
    [record] = ledger.history(KEY)
    assert record.request_id == "q1"
    assert record.status == "failed"
    assert record.cost == PrivacyLoss(0.75)
    with pytest.raises(PrivacyBudgetExhaustedError):
        ledger.reserve(KEY, request_id="q2", fingerprint=FP, cost=PrivacyLoss(0.5), budget=budget)
    ledger.verify()


def test_release_unused_refunds_the_reservation(ledger: Ledger) -> None:
    """When the sandbox was unreachable the charge is deleted, refunded, and the id is reusable."""
    budget = PrivacyLoss(1.0, 1e-6)
    _reserve(ledger, "keep", PrivacyLoss(0.25, 1e-7), budget)
    _reserve(ledger, "q1", PrivacyLoss(0.5, 2e-7), budget)
    ledger.release_unused(KEY, "q1")
    assert ledger.spent(KEY) == PrivacyLoss(0.25, 1e-7)
    assert [c.request_id for c in ledger.history(KEY)] == ["keep"]

    ledger.release_unused(KEY, "keep")
    assert ledger.spent(KEY) == PrivacyLoss(0.0, 0.0)
    assert ledger.history(KEY) == []
    assert _reserve(ledger, "q1", PrivacyLoss(1.0, 1e-6), budget).spent_after == budget
    ledger.verify()


def test_transitions_require_a_reserved_charge(ledger: Ledger) -> None:
    """complete, fail and release_unused on an unknown or finished charge are internal errors."""
    budget = PrivacyLoss(1.0)
    for op in (ledger.fail, ledger.release_unused):
        with pytest.raises(GatewayInternalError):
            op(KEY, "missing")
    with pytest.raises(GatewayInternalError):
        ledger.complete(KEY, "missing", b"x")

    _reserve(ledger, "q1", PrivacyLoss(0.5), budget)
    ledger.complete(KEY, "q1", b"resp")
    with pytest.raises(GatewayInternalError):
        ledger.complete(KEY, "q1", b"other")
    with pytest.raises(GatewayInternalError):
        ledger.fail(KEY, "q1")
    with pytest.raises(GatewayInternalError):
        ledger.release_unused(KEY, "q1")
    with pytest.raises(GatewayInternalError):
        ledger.complete(GrantKey(KEY.consumer, "registry_b", KEY.purpose), "q1", b"x")
    assert ledger.spent(KEY) == PrivacyLoss(0.5)
    assert ledger.reserve(
        KEY, request_id="q1", fingerprint=FP, cost=PrivacyLoss(0.5), budget=budget
    ) == PriorRelease("q1", b"resp")
    with pytest.raises(InvalidArgumentError):
        ledger.reserve(KEY, request_id="", fingerprint=FP, cost=PrivacyLoss(0.1), budget=budget)
    ledger.verify()


def test_ledger_survives_restart(tmp_path: Path) -> None:
    """After close and reopen, totals, history and prior releases are intact."""
    path = tmp_path / "state" / "ledger.sqlite3"
    budget = PrivacyLoss(1.0, 1e-5)
    with Ledger(path) as first:
        _reserve(first, "q1", PrivacyLoss(0.25, 1e-6), budget)
        first.complete(KEY, "q1", b"\x00binary\xffresponse")
        _reserve(first, "q2", PrivacyLoss(0.5), budget)
        first.fail(KEY, "q2")
        _reserve(first, "q3", PrivacyLoss(0.125), budget)
    with pytest.raises(GatewayInternalError):
        first.spent(KEY)

    second = Ledger(path)
    assert second.spent(KEY) == PrivacyLoss(0.875, 1e-6)
    assert [(c.request_id, c.status) for c in second.history(KEY)] == [
        ("q1", "released"),
        ("q2", "failed"),
        ("q3", "reserved"),
    ]
    assert all(isinstance(c, ChargeRecord) and c.created_at > 1e9 for c in second.history(KEY))
    replay = second.reserve(
        KEY, request_id="q1", fingerprint=FP, cost=PrivacyLoss(0.25, 1e-6), budget=budget
    )
    assert replay == PriorRelease("q1", b"\x00binary\xffresponse")
    with pytest.raises(RequestInProgressError):
        second.reserve(KEY, request_id="q3", fingerprint=FP, cost=PrivacyLoss(0.125), budget=budget)
    with pytest.raises(PrivacyBudgetExhaustedError):
        second.reserve(KEY, request_id="q4", fingerprint=FP, cost=PrivacyLoss(0.25), budget=budget)
    second.verify()
    second.close()
    second.close()


def test_file_is_in_wal_mode_with_the_expected_tables(tmp_path: Path) -> None:
    """The ledger file is a WAL-mode SQLite database with the spend and charges tables."""
    Ledger(tmp_path / "ledger.sqlite3").close()
    conn = sqlite3.connect(tmp_path / "ledger.sqlite3")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"spend", "charges"} <= tables
    finally:
        conn.close()


def test_verify_detects_a_total_that_disagrees_with_its_charges(ledger: Ledger) -> None:
    """verify raises GatewayInternalError when the running total was tampered with."""
    _reserve(ledger, "q1", PrivacyLoss(0.25), PrivacyLoss(1.0))
    ledger.verify()
    conn = open_location(ledger.path, busy_timeout_s=5)
    try:
        conn.execute("UPDATE spend SET epsilon = 0.2500001")
    finally:
        conn.close()
    with pytest.raises(GatewayInternalError):
        ledger.verify()


def _running_sums(cost: float, n: int) -> list[float]:
    """The totals the ledger must report after each of n serialized charges of cost."""
    return list(itertools.accumulate([cost] * n))


@pytest.mark.parametrize("round_", range(5))
def test_threads_never_overspend(storage: Callable[[str], Path | PgDatabase], round_: int) -> None:
    """32 racing threads charging 0.1 against 1.0 yield exactly 10 serialized reservations (both backends)."""
    ledger = Ledger(storage(f"round{round_}/ledger.sqlite3"))
    budget, cost = PrivacyLoss(1.0), PrivacyLoss(0.1)
    start = threading.Barrier(32)
    results: list[Reservation] = []
    refused: list[PrivacyBudgetExhaustedError] = []
    unexpected: list[BaseException] = []
    guard = threading.Lock()

    def worker(i: int) -> None:
        start.wait()
        try:
            r = _reserve(ledger, f"t{i}", cost, budget)
        except PrivacyBudgetExhaustedError as exc:
            with guard:
                refused.append(exc)
        except BaseException as exc:
            with guard:
                unexpected.append(exc)
        else:
            with guard:
                results.append(r)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert unexpected == []
    assert len(results) == 10
    assert len(refused) == 22
    expected = _running_sums(0.1, 10)
    # Each reservation saw all earlier ones: the totals are exactly the serialized running sums.
    assert sorted(r.spent_after.epsilon for r in results) == expected
    assert ledger.spent(KEY) == PrivacyLoss(expected[-1])
    assert len(ledger.history(KEY)) == 10
    ledger.verify()
    ledger.close()


def _process_worker(
    path: str,
    process_index: int,
    n_threads: int,
    barrier: ProcessBarrier,
    out: Queue[tuple[int, int, list[str]]],
) -> None:
    """Runs n_threads racing reservations in this process and reports (successes, refusals)."""
    ledger = Ledger(PgDatabase(path) if is_postgres_url(path) else Path(path))
    start = threading.Barrier(n_threads)
    counts = {"ok": 0, "refused": 0}
    errors: list[str] = []
    guard = threading.Lock()

    def worker(i: int) -> None:
        start.wait()
        try:
            ledger.reserve(
                KEY,
                request_id=f"p{process_index}-t{i}",
                fingerprint=FP,
                cost=PrivacyLoss(0.125),
                budget=PrivacyLoss(0.875),
            )
        except PrivacyBudgetExhaustedError:
            outcome = "refused"
        except BaseException as exc:
            with guard:
                errors.append(repr(exc))
            return
        else:
            outcome = "ok"
        with guard:
            counts[outcome] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n_threads)]
    barrier.wait()  # both processes are up and have opened the ledger
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger.close()
    out.put((counts["ok"], counts["refused"], errors))


def test_processes_never_overspend(storage: Callable[[str], Path | PgDatabase]) -> None:
    """2 processes x 16 threads sharing one file (or one PostgreSQL database) get exactly 7 reservations of a
    7-charge budget."""
    path = storage("shared/ledger.sqlite3")
    Ledger(path).close()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    out: Queue[tuple[int, int, list[str]]] = ctx.Queue()
    procs = [
        ctx.Process(target=_process_worker, args=(path.url if isinstance(path, PgDatabase) else str(path), i, 16,
                                                  barrier, out)) for i in range(2)
    ]
    for p in procs:
        p.start()
    reports = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    assert [errors for _, _, errors in reports] == [[], []]
    assert sum(ok for ok, _, _ in reports) == 7
    assert sum(refused for _, refused, _ in reports) == 25
    with Ledger(path) as ledger:
        assert ledger.spent(KEY) == PrivacyLoss(0.875)
        assert len(ledger.history(KEY)) == 7
        ledger.verify()
