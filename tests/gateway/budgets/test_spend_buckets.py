"""The ledger's spending buckets: a window's sum from buckets equals the sum over its charges, exactly,
whatever the window's edges, through refunds, failures, zCDP and approximate-DP charges and a migration
from schema 3; and a reservation's cost no longer grows with the number of charges in the window."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.budgets.ledger import BudgetLimit, GrantKey, Ledger, Metering, PrivacyLoss, Reservation
from gateway.budgets.ledger_schema import _CAP_COLUMNS, _FLAG_COLUMNS, _GRANT_COLUMNS, _SCOPES
from gateway.budgets.records import zcdp_columns
from gateway.budgets.windows import _scope, _window_sums
from gateway.policy.periods import Window
from gateway.storage.pg import PgDatabase

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
HUGE = PrivacyLoss(1e6, 0.5, 1e6)
KEYS = [GrantKey("ana", "registry", "credit"), GrantKey("bo", "registry", "credit"),
        GrantKey("ana", "registry", "research"), GrantKey("cy", "tax", "credit")]
ORG = {"ana": "bank", "bo": "bank", "cy": "city"}


def _limit(level: str, start: float | None, end: float | None) -> BudgetLimit:
    return BudgetLimit(level, HUGE, Window(start, end))  # type: ignore[arg-type]


def _brute(conn: sqlite3.Connection, limit: BudgetLimit, key: GrantKey) -> dict[str, int]:
    where, args = _scope(limit, key, ORG[key.consumer])
    columns = _CAP_COLUMNS if limit.level.startswith("dataset_cap") else _GRANT_COLUMNS
    row = conn.execute(f"SELECT {', '.join(f'coalesce(sum({c}), 0)' for c in columns)} FROM charges"
                       f" WHERE {where}", args).fetchone()
    return {c: min(v, 1) if c in _FLAG_COLUMNS else v for c, v in zip(columns, row, strict=True)}


def _random_ledger(path: Path | PgDatabase, rng: random.Random, n: int = 400) -> tuple[Ledger, list[float]]:
    ledger = Ledger(path)
    times = []
    for i in range(n):
        key = rng.choice(KEYS)
        # clustered times: many in the same minute and hour, some days apart, some on exact boundaries
        t = T0 + rng.choice([0.0, 59.999, 60.0, 3599.5, 3600.0]) + rng.randrange(0, 3) * 86400.0 \
            + rng.random() * rng.choice([1.0, 90.0, 7200.0, 200000.0])
        kind = rng.random()
        if kind < 0.6:
            cost = PrivacyLoss(rng.choice([1e-9, 0.01, 0.3, 2.5]))
        elif kind < 0.8:
            cost = PrivacyLoss(0.1, 1e-8)  # approximate DP: no zCDP conversion
        else:
            cost = PrivacyLoss(0.2, rng.choice([0.0, 1e-9]), rng.choice([0.001, 0.02]), rng.choice([0.0, 1e-7]))
        out = ledger.reserve_nested(key, request_id=f"r{i}", fingerprint="fp", cost=cost,
                                    limits=[_limit("member", None, None)],
                                    metering=Metering(ORG[key.consumer]), now=t, durable=False)
        assert isinstance(out, Reservation)
        fate = rng.random()
        if fate < 0.15:
            ledger.release_unused(key, f"r{i}")  # a refund deletes the charge
        elif fate < 0.3:
            ledger.fail(key, f"r{i}")
        elif fate < 0.8:
            ledger.complete(key, f"r{i}", b"answer")
        times.append(t)
    return ledger, times


# three seeds on SQLite, one on PostgreSQL (the same triggers and minute arithmetic serve every seed there)
@pytest.mark.parametrize(("storage", "seed"), [("sqlite", 0), ("sqlite", 1), ("sqlite", 2),
                                               pytest.param("postgres", 0, marks=pytest.mark.postgres)],
                         indirect=["storage"])
def test_window_sums_from_buckets_equal_the_charges(storage: Callable[[str], Path | PgDatabase], seed: int) -> None:
    """Bucketed window sums equal brute-force sums over the charges, on both backends (PostgreSQL's triggers
    and its minute arithmetic must agree with SQLite's)."""
    rng = random.Random(seed)
    ledger, times = _random_ledger(storage("ledger.sqlite3"), rng)
    ledger.verify_buckets()
    edges = [*times, T0, T0 + 60.0, T0 + 3600.0, T0 + 86400.0, T0 - 1.0, T0 + 10 * 86400.0]
    with ledger._connection() as conn:
        for _ in range(300):
            a, b = sorted(rng.sample(edges, 2))
            b = b + rng.choice([0.0, 1e-6, 0.5, 61.0])
            start = None if rng.random() < 0.1 else a
            end = None if rng.random() < 0.3 else b
            for level in ("member", "organization", "dataset_cap", "dataset_cap_lifetime"):
                for key in KEYS:
                    limit = _limit(level, start, end)
                    assert _window_sums(conn, limit, key, ORG[key.consumer]) == _brute(conn, limit, key), (
                        level, key, start, end)
    ledger.close()


def test_buckets_stay_consistent_through_updates_and_a_migration(tmp_path: Path) -> None:
    """A schema-3 ledger (no buckets, no zCDP columns) is migrated: columns filled, buckets built."""
    path = tmp_path / "ledger.sqlite3"
    ledger, _ = _random_ledger(path, random.Random(7), n=150)
    ledger.close()
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("DROP TRIGGER charges_buckets_insert")
    con.execute("DROP TRIGGER charges_buckets_delete")
    con.execute("DROP TRIGGER charges_buckets_update")
    con.execute("DROP TABLE spend_buckets")
    expected = {r[0]: (r[1], r[2]) for r in con.execute("SELECT request_id, zcdp_units, no_zcdp FROM charges")}
    con.execute("ALTER TABLE charges DROP COLUMN zcdp_units")
    con.execute("ALTER TABLE charges DROP COLUMN no_zcdp")
    con.execute("PRAGMA user_version = 3")
    con.close()
    ledger = Ledger(path)
    ledger.verify_buckets()
    with ledger._connection() as conn:
        got = {r[0]: (r[1], r[2]) for r in conn.execute("SELECT request_id, zcdp_units, no_zcdp FROM charges")}
        assert got == expected
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        assert version == 7
        # a direct edit of a charge's units (as a migration would make) moves its buckets too
        conn.execute("UPDATE charges SET epsilon_units = epsilon_units + 5, created_at = created_at + 7200"
                     " WHERE rowid IN (SELECT rowid FROM charges LIMIT 10)")
    ledger.verify_buckets()
    ledger.close()


def test_zcdp_columns_are_the_level_conversions() -> None:
    assert zcdp_columns(0, 0, 7) == (7, 0)                 # zCDP: its rho
    assert zcdp_columns(10**9, 5, 7) == (7, 0)             # zCDP with selection's delta: still its rho
    assert zcdp_columns(10**9, 0, 0) == (5 * 10**8, 0)     # pure eps 1: rho 1/2
    assert zcdp_columns(10**8, 10, 0) == (0, 1)            # approximate DP: no conversion
    assert zcdp_columns(0, 0, 0) == (0, 0)                 # a free replay
    assert len(_SCOPES) == 4  # member, organisation grant, dataset, organisation-wide


def test_reservation_cost_does_not_grow_with_the_charges_in_the_window(tmp_path: Path) -> None:
    """20,000 charges in the window: the window's sum steps through a few bucket rows, not 20,000 index
    entries. Counted in SQLite virtual-machine instructions (a progress handler), not timed: timing is for
    `make bench` (a reservation with 300,000 charges in its window: 0.44 ms, was 147 ms)."""
    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger(path)
    key = KEYS[0]
    con = sqlite3.connect(path, isolation_level=None)
    cols = ("consumer, request_id, dataset, purpose, fingerprint, epsilon, delta, status, created_at, updated_at,"
            " organization, epsilon_units, zcdp_units")
    con.execute("BEGIN")
    con.executemany(f"INSERT INTO charges ({cols}) VALUES (?, ?, ?, ?, 'fp', 1e-6, 0, 'released', ?, ?, 'bank',"
                    " 1000, 1)", [(key.consumer, f"b{i}", key.dataset, key.purpose, T0 + i * 10.0, T0 + i * 10.0)
                                  for i in range(20_000)])
    con.execute("COMMIT")
    con.close()
    ledger.verify_buckets()
    limit = _limit("member", T0 + 5.0, T0 + 40 * 86400.0)
    with ledger._connection() as conn:
        steps = [0]

        def count() -> int:
            steps[0] += 1
            return 0

        conn.set_progress_handler(count, 100)
        fast = _window_sums(conn, limit, key, "bank")
        by_buckets, steps[0] = steps[0], 0
        slow = _brute(conn, limit, key)
        by_charges = steps[0]
        conn.set_progress_handler(None, 100)
    assert fast == slow and fast["epsilon_units"] == 1000 * 20_000 - 1000  # every charge but the one before the start
    assert by_buckets * 20 < by_charges, (by_buckets, by_charges)  # measured: 15 against 2,600
    ledger.close()


def test_data_owner_cap_ledger_sums_windows_from_buckets_exactly(tmp_path: Path) -> None:
    """The sandbox's cap ledger: bucketed window sums equal the charge sums in every column, also after
    opening a file written before the buckets existed (version 0), whose buckets are then built from its
    charges."""
    from sandbox.engine.caps import _COUNT_COLUMNS, CapLedger
    from sandbox.pricing.cap_rules import ReleaseLoss, counts

    path = tmp_path / "caps.sqlite3"
    rng = random.Random(11)
    caps = CapLedger(path)
    times = []
    for i in range(300):
        t = T0 + rng.choice([0.0, 59.999, 3600.0]) + rng.random() * rng.choice([1.0, 120.0, 9000.0, 200000.0])
        ds = rng.choice(["registry", "tax"])
        loss = rng.choice([ReleaseLoss.of(rng.choice([1e-9, 0.01, 0.5]), rng.choice([0.0, 1e-9]), 0.0),
                           ReleaseLoss("zcdp", 0.0, rng.choice([0.0, 1e-9]), 0.01)])
        assert caps.charge(f"r{i}", ds, "query", counts(loss, rng.choice([None, 1e-6])), None,
                           now=t) == "charged"
        times.append(t)
    assert caps.charge("r0", "registry", "query", counts(ReleaseLoss("pure", 0.1), None), None,
                       now=T0) == "duplicate"
    caps.close()
    con = sqlite3.connect(path, isolation_level=None)  # back to a file without buckets
    for trigger in ("cap_buckets_insert", "cap_buckets_delete", "cap_buckets_update"):
        con.execute(f"DROP TRIGGER {trigger}")
    con.execute("DROP TABLE cap_buckets")
    con.execute("PRAGMA user_version = 0")
    con.close()
    caps = CapLedger(path)
    edges = [*times, T0, T0 + 60.0, T0 + 3600.0, T0 + 86400.0]
    for _ in range(300):
        a, b = sorted(rng.sample(edges, 2))
        start = None if rng.random() < 0.15 else a
        end = None if rng.random() < 0.3 else b + rng.choice([0.0, 0.5, 61.0])
        for ds in ("registry", "tax"):
            where, args = "dataset = ?", [ds]
            if start is not None:
                where, args = where + " AND created_at >= ?", [*args, start]
            if end is not None:
                where, args = where + " AND created_at < ?", [*args, end]
            brute = caps._conn.execute(
                f"SELECT {', '.join(f'coalesce(sum({c}), 0)' for c in _COUNT_COLUMNS)} FROM cap_charges"
                f" WHERE {where}", args).fetchone()
            assert caps.sums(ds, start, end).to_json() == list(brute), (ds, start, end)
    caps.close()
