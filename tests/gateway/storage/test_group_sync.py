"""Group commit on the ledger's SQLite file: a durable commit returns only after an fsync that began after it
committed; the commits made while one fsync runs share the next; an fsync error fails that wait and every
later one; the ledger's durable transactions go through it and ``durable=False`` ones do not wait."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from gateway.budgets.ledger import GrantKey, Ledger, PrivacyLoss
from gateway.errors import StorageUnavailableError
from gateway.storage.sqlite import GroupSync, group_sync


def _error() -> StorageUnavailableError:
    return StorageUnavailableError("sync failed")


class _Recorded(GroupSync):
    """The real fsync, with what each one covered recorded, and the first one held until `release` is set."""

    def __init__(self, database: Path) -> None:
        super().__init__(database)
        self.release = threading.Event()
        self.started = threading.Event()
        self.covered: list[tuple[int, float]] = []  # (commits made before it began, when it finished)

    def _fsync(self) -> None:
        target = self._committed
        if not self.started.is_set():
            self.started.set()
            assert self.release.wait(10)
        super()._fsync()
        self.covered.append((target, time.monotonic()))


def test_commits_during_an_fsync_share_the_next_one(tmp_path: Path) -> None:
    """Six writers: the first fsync covers the first commit only; the five that committed while it ran are
    covered by one more fsync, and no wait returns before an fsync that covers its commit has finished."""
    db = tmp_path / "ledger.sqlite3"
    db.write_bytes(b"")
    sync = _Recorded(db)
    returned: dict[int, float] = {}

    def writer() -> None:
        ticket = sync.committed()
        sync.wait(ticket, _error)
        returned[ticket] = time.monotonic()

    first = threading.Thread(target=writer)
    first.start()
    assert sync.started.wait(10)
    others = [threading.Thread(target=writer) for _ in range(5)]
    for t in others:
        t.start()
    deadline = time.monotonic() + 10
    while sync._committed < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    sync.release.set()
    for t in [first, *others]:
        t.join(10)
    assert sorted(returned) == [1, 2, 3, 4, 5, 6]
    assert [target for target, _ in sync.covered] == [1, 6]
    assert sync.fsyncs == 2
    for ticket, when in returned.items():
        assert any(target >= ticket and done <= when for target, done in sync.covered), ticket


def test_a_failed_fsync_fails_this_and_every_later_wait(tmp_path: Path) -> None:
    """No file to sync (the fsync cannot be done): the wait raises the caller's error, and so does every later
    one, even for commits made after the failure; nothing is ever reported durable again."""
    sync = GroupSync(tmp_path / "gone" / "ledger.sqlite3")
    with pytest.raises(StorageUnavailableError) as first:
        sync.wait(sync.committed(), _error)
    assert isinstance(first.value.__cause__, OSError)
    with pytest.raises(StorageUnavailableError):
        sync.wait(sync.committed(), _error)
    assert sync.fsyncs == 0


def test_the_ledgers_durable_commits_are_synced_and_deferred_ones_are_not(tmp_path: Path) -> None:
    """One sequential durable transaction, one fsync; a reservation with durable=False waits for none (the
    completion's fsync covers both); the data is there after the ledger is reopened."""
    path = tmp_path / "ledger.sqlite3"
    key = GrantKey("alice", "registry", "research")
    with Ledger(path) as ledger:
        sync = group_sync(path)
        before = sync.fsyncs
        ledger.reserve(key, request_id="r1", fingerprint="f", cost=PrivacyLoss(0.25), budget=PrivacyLoss(1.0),
                       durable=False)
        assert sync.fsyncs == before
        ledger.complete(key, "r1", b"answer")
        assert sync.fsyncs == before + 1
        ledger.reserve(key, request_id="r2", fingerprint="f", cost=PrivacyLoss(0.25), budget=PrivacyLoss(1.0))
        assert sync.fsyncs == before + 2
    with Ledger(path) as reopened:
        assert reopened.spent(key).epsilon == pytest.approx(0.5)
