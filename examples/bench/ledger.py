"""The cost of charging and auditing per request: RunQuery on the real gateway and on the stand-in that skips
both, and ExplainQuery, interleaved; the real gateway's durable steps timed inside it; the machine's floors
(loopback mTLS round trip, durable SQLite commit, fsync); and a reservation's cost with a long history."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

from examples.bench.common import log, ms, summary
from examples.bench.profile import STAGE_AUDIT, STAGE_COMPLETE, STAGE_RESERVE, instrumented
from examples.bench.queries import WORKLOAD
from examples.bench.systems import GatewaySystem

__all__ = ["floors", "ledger_group", "ledger_history"]


def ledger_group(gw: GatewaySystem, reps: int) -> dict[str, Any]:
    """Issue #4: the cost of charging and auditing per request. RunQuery on the real gateway, RunQuery on the
    stand-in gateway that skips charging and auditing, and ExplainQuery, interleaved in a rotating order; the
    real gateway's durable steps timed inside it; and the physical floors (loopback mTLS round trip, fsync)."""
    q = WORKLOAD[0]
    times: dict[str, list[float]] = {"run_query": [], "run_query_bare": [], "explain_query": []}

    def call(kind: str) -> None:
        if kind == "explain_query":
            times[kind].append(gw.explain(q))
            return
        out = gw.run(q, bare=kind == "run_query_bare")
        assert out.seconds is not None
        times[kind].append(out.seconds)

    kinds = list(times)
    for _ in range(3):
        for kind in kinds:
            call(kind)
        for v in times.values():
            v.clear()
    with instrumented(gw) as timer:
        for i in range(reps):
            for j in range(len(kinds)):
                call(kinds[(i + j) % len(kinds)])
        stages = {k: list(v) for k, v in timer.times.items()}
    reserve, complete, audit = (stages.get(s, []) for s in (STAGE_RESERVE, STAGE_COMPLETE, STAGE_AUDIT))
    out: dict[str, Any] = {"query": q.sql, "reps": reps, **{k: summary(v) for k, v in times.items()},
                           "ledger_reserve": summary(reserve), "ledger_complete": summary(complete),
                           "audit_append": summary(audit), "floors": floors(gw)}
    out["difference"] = {p: out["run_query"][p] - out["run_query_bare"][p] for p in ("median", "p99")}
    # Each round has one real and one stand-in request, close in time: their differences, paired.
    out["paired_difference"] = summary([a - b for a, b in zip(times["run_query"], times["run_query_bare"],
                                                               strict=True)])
    return out


def ledger_history(root: Path, sizes: tuple[int, ...] = (0, 10_000, 100_000, 300_000), reps: int = 30
                   ) -> dict[str, Any]:
    """A reservation's cost with N earlier charges in its windows (member, organisation and data owner's cap,
    one calendar month): the ledger's bucketed sums, side by side with summing the charges of each window
    (how every reservation read its windows before schema 4). Charges are bulk-inserted (one transaction)
    into a fresh ledger under `root`."""
    import sqlite3

    from gateway.budgets.ledger import BudgetLimit, GrantKey, Ledger, Metering, PrivacyLoss
    from gateway.budgets.ledger_schema import _FLAG_COLUMNS
    from gateway.budgets.windows import _scope, _window_sums
    from gateway.policy.periods import Period

    root.mkdir(parents=True, exist_ok=True)
    path = root / "history.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    ledger = Ledger(path)
    key, org = GrantKey("analyst", "registry", "research"), "bank"
    now = dt.datetime(2026, 3, 28, 12, tzinfo=dt.UTC).timestamp()
    window = Period("calendar", "month").window(now)
    big = PrivacyLoss(1e9, 0.5)
    limits = [BudgetLimit(level, big, window) for level in ("member", "organization", "dataset_cap")]  # type: ignore[arg-type]
    out: dict[str, Any] = {"sizes": {}}
    done = 0
    for n in sizes:
        con = sqlite3.connect(path, isolation_level=None)
        con.execute("BEGIN")
        con.executemany(
            "INSERT INTO charges (consumer, request_id, dataset, purpose, fingerprint, epsilon, delta, status,"
            " created_at, updated_at, organization, epsilon_units, zcdp_units) VALUES"
            " (?, ?, ?, ?, 'fp', 1e-6, 0, 'released', ?, ?, ?, 1000, 1)",
            [(key.consumer, f"h{i}", key.dataset, key.purpose, window.start + 1 + (i % 2_000_000),
              window.start + 1 + (i % 2_000_000), org) for i in range(done, n)])
        con.execute("COMMIT")
        con.close()
        done = n
        reserve, buckets, charges = [], [], []
        for i in range(reps):
            t0 = time.perf_counter()
            ledger.reserve_nested(key, request_id=f"q{n}-{i}", fingerprint="fp", cost=PrivacyLoss(1e-6),
                                  limits=limits, metering=Metering(org), now=now, durable=False)
            reserve.append(time.perf_counter() - t0)
            with ledger._connection() as conn:
                t0 = time.perf_counter()
                fast = [_window_sums(conn, lim, key, org) for lim in limits]
                buckets.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                slow = []
                for lim, got in zip(limits, fast, strict=True):  # the columns the level reads
                    where, args = _scope(lim, key, org)
                    sums = ", ".join(f"coalesce(sum({c}), 0)" for c in got)
                    row = conn.execute(f"SELECT {sums} FROM charges WHERE {where}", args).fetchone()
                    slow.append({c: min(v, 1) if c in _FLAG_COLUMNS else v for c, v in zip(got, row, strict=True)})
                charges.append(time.perf_counter() - t0)
            assert fast == slow, "bucketed sums differ from the charge sums"
        out["sizes"][str(n)] = {"reserve": summary(reserve), "window_sums_buckets": summary(buckets),
                                "window_sums_charges": summary(charges)}
        log(f"  ledger history {n:>7,} charges: reserve {ms(summary(reserve)['median'])} ms, "
            f"windows from buckets {ms(summary(buckets)['median'])} ms, summing charges "
            f"{ms(summary(charges)['median'])} ms")
    ledger.close()
    return out


def floors(gw: GatewaySystem, reps: int = 200) -> dict[str, Any]:
    """What no request can go below on this machine: a gRPC round trip over the same mTLS channel (the
    standard health check: no work in the servicer), and one durable SQLite commit (WAL, synchronous=FULL,
    long-lived connection) and one raw write + fsync in the gateway's state directory."""
    import sqlite3

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(gw.channels["bench"])
    rtt: list[float] = []
    for i in range(reps + 5):
        t0 = time.perf_counter()
        health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        if i >= 5:
            rtt.append(time.perf_counter() - t0)
    probe = gw.settings.state_dir / "fsync-probe.sqlite3"
    con = sqlite3.connect(probe, isolation_level=None)
    commit: list[float] = []
    raw: list[float] = []
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body BLOB)")
        for _ in range(reps):
            t0 = time.perf_counter()
            con.execute("BEGIN IMMEDIATE")
            con.execute("INSERT INTO t (body) VALUES (?)", (os.urandom(1024),))
            con.execute("COMMIT")
            commit.append(time.perf_counter() - t0)
        fd = os.open(gw.settings.state_dir / "fsync-probe.bin", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for i in range(reps):
                t0 = time.perf_counter()
                os.pwrite(fd, os.urandom(4096), (i % 64) * 4096)
                os.fsync(fd)
                raw.append(time.perf_counter() - t0)
        finally:
            os.close(fd)
    finally:
        con.close()
    return {"grpc_mtls_round_trip": summary(rtt), "sqlite_durable_commit": summary(commit),
            "write_fsync": summary(raw)}
