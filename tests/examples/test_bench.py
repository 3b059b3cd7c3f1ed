"""`make bench` end to end at a small size: every part of the harness runs and the report shows every query."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import examples.bench.__main__ as bench_main
from examples.bench import common
from examples.bench.ledger import ledger_history
from examples.bench.queries import WORKLOAD
from examples.bench.throughput import QUERIES

pytestmark = pytest.mark.slow


def test_a_small_run_measures_every_query_and_writes_the_report(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """20,000 people, one repetition of each part (SmartNoise off: its venv is installed on first use): the
    gateway answers every workload query, and BENCHMARKS.md and the JSON carry latency, accuracy, the cost of
    charging and auditing and the stage profile."""
    monkeypatch.setattr(common, "BENCH_DIR", tmp_path / "bench")  # the data cache, away from the checkout's

    def short_history(root: Path) -> dict[str, Any]:
        return ledger_history(tmp_path / "history", sizes=(0, 1_000), reps=2)

    monkeypatch.setattr(bench_main, "ledger_history", short_history)
    out, raw = tmp_path / "BENCHMARKS.md", tmp_path / "bench-results.json"
    assert bench_main.main(["--sizes", "20000", "--reps", "1", "--warmup", "1", "--accuracy-reps", "1",
                            "--ledger-reps", "2", "--profile-reps", "1", "--smartnoise-max", "0",
                            "--throughput-people", "20000", "--throughput-clients", "2", "--throughput-seconds", "1",
                            "--out", str(out), "--json", str(raw)]) == 0
    results = json.loads(raw.read_text())
    latency = results["sizes"]["20000"]["latency"]
    assert all(latency[q.id]["gateway"]["n"] == 1 for q in WORKLOAD), latency
    assert all("median" in latency[q.id]["duckdb"] for q in WORKLOAD)
    assert set(results["accuracy"]["queries"]) == {q.id for q in WORKLOAD}
    assert results["ledger"]["run_query"]["n"] == 2 and results["ledger"]["history"]["sizes"].keys() == {"0", "1000"}
    assert results["profile"]["queries"]
    report = out.read_text()
    cells = results["throughput"]["cells"]
    assert {(c["query"], c["gateways"]) for c in cells} == {(q, g) for q in QUERIES for g in (1, 2)}
    assert all(c["answers"] > 0 and c["failed"] == 0 for c in cells), cells
    for heading in ("## Latency", "## Where the gateway's time goes", "## Accuracy", "## Cost of charging",
                    "## Throughput"):
        assert heading in report
    assert all(f"`{q.id}`: `{q.sql}`" in report for q in WORKLOAD)
