"""`python -m examples.bench.link` end to end at a tiny size: both links answer every operation and the table
has a row per operation with a median and a p90 for each link."""

from __future__ import annotations

import re
import sys

import pytest

from examples.bench import link

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_link_bench_times_both_links(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "argv", ["link", "--reps", "3"])
    link.main()
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| ") and "ms" not in r[:12]]
    body = [r for r in rows if re.search(r"\d+\.\d{3} / \d+\.\d{3}", r)]
    assert [r.split(" | ")[0] for r in body] == [
        "| health, pooled connection", "| noisy COUNT, pooled connection", "| health, new connection",
        "| RunQuery through a gateway (gRPC, charge, sandbox, receipt, audit)"]
    assert all(len(re.findall(r"\d+\.\d{3} / \d+\.\d{3}", r)) == 2 for r in body)
