"""The benchmark's stack floor (examples/bench/floor.py) does the minimal request's work and nothing else."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import pytest

from examples.bench.floor import FloorSystem
from examples.bench.queries import WORKLOAD
from examples.bench.systems import income_upper
from tests.helpers import Env

pytestmark = pytest.mark.integration


def test_floor_answers_count_sum_avg_noisily_and_charges_each_durably(env: Env) -> None:
    """COUNT, SUM and AVG come back through mTLS gRPC and the floor's sandbox process, noisy but close to the
    truth (ε = 1: the COUNT's discrete Laplace noise exceeds 60 with probability below 1e-25), each with one
    durable charge holding its release; every other workload query is "unsupported"."""
    root = Path(tempfile.mkdtemp(prefix="pgw-floor-"))  # short: a Unix socket path
    floor = FloorSystem(env.data_dir, root, 2, income_upper())
    try:
        by_id = {q.id: q for q in WORKLOAD}
        (n,), = env.exact("SELECT COUNT(*) FROM residents")
        count = floor.run(by_id["count"])
        assert count.seconds is not None and count.seconds > 0
        ((_, (noisy,)),) = count.rows
        assert abs(noisy - float(n)) <= 60
        total = floor.run(by_id["sum"])
        ((_, (noisy_sum,)),) = total.rows
        (exact_sum,), = env.exact(f"SELECT SUM(least(greatest(income, 0), {income_upper()})) FROM residents")
        assert noisy_sum != exact_sum  # noise at scale 2e6: equal with probability about 2.5e-7
        avg = floor.run(by_id["avg"])
        ((_, values),) = avg.rows
        assert len(values) == 2  # AVG releases a noisy sum and a noisy count
        others = [q for q in WORKLOAD if q.id not in ("count", "sum", "avg")]
        assert others and all(floor.run(q).unsupported for q in others)
        con = sqlite3.connect(root / "floor-ledger.sqlite3")
        try:
            assert con.execute("SELECT count(*) FROM charges WHERE release IS NOT NULL").fetchone() == (3,)
        finally:
            con.close()
    finally:
        floor.close()
