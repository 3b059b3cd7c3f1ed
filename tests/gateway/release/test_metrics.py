"""Unit tests for gateway.release.metrics: exposition format (parsed by a small strict parser) and the HTTP endpoint."""

from __future__ import annotations

import math
import re
import threading
import urllib.error
import urllib.request

import pytest

from gateway.release.metrics import DURATION_BUCKETS, Metrics

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(?:\{{(.*)\}})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')

Labels = tuple[tuple[str, str], ...]


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], value)


def parse(text: str) -> tuple[dict[str, str], dict[tuple[str, Labels], float]]:
    """A strict parser for the text format: returns TYPE per family and the value per (name, labels)."""
    assert text.endswith("\n")
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples: dict[tuple[str, Labels], float] = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert name not in helps, f"duplicate HELP {name}"
            helps.add(name)
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram"), line
            assert name in helps and name not in types, line
            types[name] = kind
            continue
        match = _SAMPLE.match(line)
        assert match, f"bad sample line {line!r}"
        name, raw_labels, raw_value = match.groups()
        labels: list[tuple[str, str]] = []
        rest = raw_labels or ""
        while rest:
            lm = _LABEL.match(rest)
            assert lm, f"bad labels in {line!r}"
            labels.append((lm.group(1), _unescape(lm.group(2))))
            rest = rest[lm.end():]
        family = re.sub(r"_(bucket|sum|count)$", "", name) if name not in types else name
        assert family in types, f"sample {name} before its TYPE"
        value = {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}.get(raw_value)
        key = (name, tuple(labels))
        assert key not in samples, f"duplicate sample {line!r}"
        samples[key] = float(raw_value) if value is None else value
    return types, samples


def test_exposition_format() -> None:
    """Every family has HELP/TYPE; counters, gauges and the histogram carry the recorded values."""
    m = Metrics()
    m.observe_request("QueryService", "RunQuery", "answered", "OK", 0.02)
    m.observe_request("QueryService", "RunQuery", "answered", "OK", 0.7)
    m.observe_request("QueryService", "RunQuery", "refused", "INVALID_ARGUMENT", 0.001)
    m.set_budget("analyst", "registry", "testing", spent=0.5, remaining=9.5)
    m.set_sandbox_up(True)
    types, samples = parse(m.render())
    assert types == {
        "pgw_requests_total": "counter", "pgw_request_duration_seconds": "histogram",
        "pgw_budget_spent_epsilon": "gauge", "pgw_budget_remaining_epsilon": "gauge",
        "pgw_sandbox_up": "gauge", "pgw_alerts_total": "counter",
    }
    ok = (("service", "QueryService"), ("method", "RunQuery"), ("outcome", "answered"), ("code", "OK"))
    assert samples[("pgw_requests_total", ok)] == 2
    base = (("service", "QueryService"), ("method", "RunQuery"))
    buckets = [(float(dict(lbl)["le"]), v) for (n, lbl), v in samples.items()
               if n == "pgw_request_duration_seconds_bucket"]
    assert [b for b, _ in buckets] == [*DURATION_BUCKETS, math.inf]
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)  # cumulative
    assert dict(buckets)[0.005] == 1 and dict(buckets)[0.025] == 2 and dict(buckets)[1.0] == 3
    assert samples[("pgw_request_duration_seconds_count", base)] == 3 == dict(buckets)[math.inf]
    assert samples[("pgw_request_duration_seconds_sum", base)] == pytest.approx(0.721)
    grant = (("consumer", "analyst"), ("dataset", "registry"), ("purpose", "testing"))
    assert samples[("pgw_budget_remaining_epsilon", grant)] == 9.5
    assert samples[("pgw_budget_spent_epsilon", grant)] == 0.5
    assert samples[("pgw_sandbox_up", ())] == 1


def test_label_values_are_escaped() -> None:
    """Backslash, double quote and newline in label values round-trip through the parser."""
    m = Metrics()
    nasty = 'a"b\\c\nd'
    m.set_budget(nasty, "registry", "p", spent=0.0, remaining=1.0)
    text = m.render()
    assert 'consumer="a\\"b\\\\c\\nd"' in text
    _, samples = parse(text)
    assert ("pgw_budget_remaining_epsilon", (("consumer", nasty), ("dataset", "registry"), ("purpose", "p"))) in samples


def test_budget_alert_fires_once_per_crossing() -> None:
    """budget_nearly_exhausted counts when remaining falls to 10% or below, once until it recovers."""
    m = Metrics()
    m.set_budget("c", "d", "p", spent=5.0, remaining=5.0)
    m.set_budget("c", "d", "p", spent=9.0, remaining=1.0)
    m.set_budget("c", "d", "p", spent=9.5, remaining=0.5)
    _, samples = parse(m.render())
    assert samples[("pgw_alerts_total", (("rule", "budget_nearly_exhausted"),))] == 1


def test_concurrent_observations_are_counted() -> None:
    """8 threads x 500 observations are all counted."""
    m = Metrics()

    def work() -> None:
        for _ in range(500):
            m.observe_request("S", "M", "answered", "OK", 0.003)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _, samples = parse(m.render())
    assert samples[("pgw_request_duration_seconds_count", (("service", "S"), ("method", "M")))] == 4000


def test_http_endpoint_on_loopback() -> None:
    """/metrics is served on 127.0.0.1 with the text content type; other paths are 404."""
    m = Metrics()
    m.set_sandbox_up(False)
    server, port = m.serve(0)
    try:
        assert server.server_address[0] == "127.0.0.1" and port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            body = resp.read().decode()
        _, samples = parse(body)
        assert samples[("pgw_sandbox_up", ())] == 0
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
        assert info.value.code == 404
    finally:
        server.shutdown()
        server.server_close()
