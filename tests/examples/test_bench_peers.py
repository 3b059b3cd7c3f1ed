"""The accuracy table against the peers (examples/bench/peers.py): its predicted errors are the mechanisms'
own arithmetic, its verdict marks the cells where the gateway is behind, and a small run writes the table."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from examples.bench import common
from examples.bench.peer_cases import CASES
from examples.bench.peers import main
from examples.bench.peers_report import _within, median_interval, predicted_linear, verdict


@pytest.mark.parametrize("scale", [0.7, 1.0, 2.0, 120_000.0])
def test_predicted_error_of_one_cell_is_the_median_of_the_discrete_laplace(scale: float) -> None:
    """For one cell of truth t the prediction is m with P(|Z| <= m t) >= 1/2 and below 1/2 just under it."""
    t = 1_000.0 if scale < 10 else 1e9
    m = predicted_linear([t], scale)
    assert _within(m * t, scale, True) >= 0.5
    assert _within(m * t * (1 - 1e-9) - 1e-9, scale, True) < 0.5
    # The discrete median is an integer: |Z| takes integer values only.
    assert m * t == pytest.approx(round(m * t), abs=1e-6)


def test_predicted_error_continuous_is_ln2_times_the_scale() -> None:
    assert predicted_linear([1e6], 1000.0, discrete=False) == pytest.approx(math.log(2) * 1000.0 / 1e6, rel=1e-9)


def test_discrete_laplace_probabilities_sum_to_one() -> None:
    """P(|Z| <= k) from the closed form agrees with the summed mass exp(-|j|/s) / normaliser."""
    s = 1.7
    norm = sum(math.exp(-abs(j) / s) for j in range(-400, 401))
    for k in (0, 1, 3, 10):
        mass = sum(math.exp(-abs(j) / s) for j in range(-k, k + 1)) / norm
        assert _within(k + 0.5, s, True) == pytest.approx(mass, rel=1e-12)


def test_median_interval_brackets_the_median() -> None:
    med, lo, hi = median_interval([float(i) for i in range(101)])
    assert med == 50.0 and lo < 50.0 < hi
    assert all(math.isnan(x) for x in median_interval([]))


def _res(gw: float, od: float) -> dict[str, object]:
    return {"gateway": {"predicted": gw, "median": gw, "ci": [gw * 0.9, gw * 1.1]},
            "opendp": {"predicted": od, "median": od, "ci": [od * 0.9, od * 1.1]}}


def test_verdict_marks_the_gateway_behind_only_when_its_predicted_error_is_larger() -> None:
    assert verdict(_res(1.0, 1.0))[1].startswith("✅")
    assert verdict(_res(0.5, 1.0))[1].startswith("✅")
    best, standing = verdict(_res(1.3, 1.0))
    assert best == "OpenDP" and standing.startswith("❌ 1.30x")


@pytest.mark.slow
def test_a_small_gateway_only_run_writes_every_shared_query(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """20,000 people, two releases each, peers off (their venvs install on first use): every shared query is
    answered by the gateway, with its charge and a predicted error, and the report lists it."""
    monkeypatch.setattr(common, "BENCH_DIR", tmp_path / "bench")
    out, raw = tmp_path / "acc.md", tmp_path / "acc.json"
    assert main(["--sizes", "20000", "--reps", "2", "--no-opendp", "--no-smartnoise",
                 "--out", str(out), "--json", str(raw)]) == 0
    cases = json.loads(raw.read_text())["sizes"]["20000"]["cases"]
    for case in CASES:
        gw = cases[case.id]["gateway"]
        assert gw["n"] >= 2 and gw["predicted"] > 0 and gw["charged"].startswith("ε "), (case.id, gw)
    report = out.read_text()
    assert all(f"| {case.title} |" in report for case in CASES)
    assert "load average" in report


def _results(size: str, case_ids: list[str], command: str) -> dict[str, object]:
    cell = {"median": 1e-4, "ci": [9e-5, 1.1e-4], "predicted": 1e-4, "n": 60, "charged": "ε 1"}
    return {"command": command, "config": {"reps": 60},
            "machine": {"cores": 2, "cpu": "cpu", "python": "3.11", "versions": {}, "date": "d", "git_commit": "c",
                        "load_average_start": 1.0, "load_average_end": 2.0},
            "sizes": {size: {"cases": {c: {"gateway": cell, "opendp": cell} for c in case_ids}}}}


def test_render_merges_runs_of_one_size_measured_in_parts(tmp_path: Path) -> None:
    """Two processes measuring different cases of one size, and a third another size, make one report."""
    ids = [c.id for c in CASES]
    parts = [_results("1000000", ids[:3], "a"), _results("1000000", ids[3:], "b"), _results("100000", ids, "c")]
    paths = []
    for i, part in enumerate(parts):
        paths.append(tmp_path / f"{i}.json")
        paths[-1].write_text(json.dumps(part))
    out = tmp_path / "acc.md"
    assert main(["--render", *map(str, paths), "--out", str(out)]) == 0
    report = out.read_text()
    assert "## 1,000,000 people" in report and "## 100,000 people" in report
    assert report.count(f"| {CASES[0].title} |") == 2 and report.count(f"| {CASES[-1].title} |") == 2
