"""The wire benchmark's workers: every contender round-trips every workload, and the declared schema refuses
every malformed frame of the strictness probes (the protobuf contender cannot refuse them all)."""

from __future__ import annotations

import pytest

from examples.bench.wire import build_plan, count_nodes, worker

pytestmark = pytest.mark.slow


def test_the_large_plan_is_large() -> None:
    """The plan workload has thousands of nodes, joins and per-unit subqueries."""
    assert count_nodes(build_plan().plan) > 5000


@pytest.mark.parametrize("contender", ["msgspec", "protobuf"])
def test_workers_round_trip_and_probe(contender: str) -> None:
    """A worker's run round-trips each workload (it asserts so) and reports every probe."""
    out = worker(contender, reps=1)
    for name in ("plan", "verify_request", "verify_result", "release"):
        assert out[name]["bytes"] > 0 and out[name]["decode_ms"] > 0
    if contender == "msgspec":
        assert out["probes"] and all(v.startswith("refused") for v in out["probes"].values()), out["probes"]
    else:
        assert out["probes"]["request_id holding an embedded message (same wire type)"] == "ACCEPTED"
