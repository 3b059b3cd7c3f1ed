"""The write turn of a database file among one process's threads: one queue per file, arrival order,
reentrant within a thread, a clear error when the turn does not come in time; the ledger's writers under
it lose no charge and overspend nothing."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.budgets.ledger import GrantKey, Ledger, PrivacyLoss
from gateway.errors import PrivacyBudgetExhaustedError, StorageUnavailableError
from gateway.storage.sqlite import writer_queue


def _busy() -> StorageUnavailableError:
    return StorageUnavailableError("busy")


def test_one_queue_per_file_whatever_the_spelling(tmp_path: Path) -> None:
    """Every store on one file shares its queue; another file has its own."""
    a = writer_queue(tmp_path / "ledger.sqlite3")
    assert writer_queue(str(tmp_path / "x" / ".." / "ledger.sqlite3")) is a
    assert writer_queue(tmp_path / "other.sqlite3") is not a


def test_turns_come_in_arrival_order_and_reentry_passes(tmp_path: Path) -> None:
    """Waiters get the turn in the order they asked; the holder may re-enter without deadlocking."""
    q = writer_queue(tmp_path / "order.sqlite3")
    order: list[int] = []

    def writer(i: int) -> None:
        with q.turn(10, _busy):
            order.append(i)

    with q.turn(10, _busy), q.turn(10, _busy):  # reentrant in the holding thread
        threads = []
        for i in range(6):
            t = threading.Thread(target=writer, args=(i,))
            t.start()
            threads.append(t)
            time.sleep(0.05)  # let thread i queue before thread i+1
    for t in threads:
        t.join(10)
    assert order == list(range(6))


def test_a_turn_that_does_not_come_in_time_raises_the_callers_error(tmp_path: Path) -> None:
    """A writer queued past the timeout gets `error()`, and the queue still works afterwards."""
    q = writer_queue(tmp_path / "slow.sqlite3")
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with q.turn(10, _busy):
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(10)
    with pytest.raises(StorageUnavailableError), q.turn(0.05, _busy):
        pass
    release.set()
    t.join(10)
    with q.turn(1, _busy):
        pass


def test_64_threads_reserving_on_one_ledger_get_exactly_the_budget(tmp_path: Path) -> None:
    """Reserve + complete from 64 threads through the queue: exactly N succeed, the rest are refused."""
    n = 7
    key = GrantKey("c", "d", "p")
    with Ledger(tmp_path / "ledger.sqlite3") as ledger:
        barrier = threading.Barrier(64)

        def one(i: int) -> str:
            barrier.wait(10)
            try:
                ledger.reserve(key, request_id=f"r{i}", fingerprint=f"f{i}", cost=PrivacyLoss(0.25, 0.0),
                               budget=PrivacyLoss(0.25 * n, 0.0))
            except PrivacyBudgetExhaustedError:
                return "refused"
            ledger.complete(key, f"r{i}", b"answer")
            return "ok"

        with ThreadPoolExecutor(64) as pool:
            results = list(pool.map(one, range(64)))
        assert results.count("ok") == n
        assert results.count("refused") == 64 - n
        ledger.verify()
