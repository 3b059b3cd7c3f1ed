"""Prometheus text-format metrics, served on a separate loopback HTTP port (stdlib only, thread-safe).

Metrics (exposition format 0.0.4):

* ``pgw_requests_total{service,method,outcome,code}`` counter: every RPC, by outcome
  (answered/refused/failed) and gRPC status code name;
* ``pgw_request_duration_seconds{service,method}`` histogram with fixed buckets (``DURATION_BUCKETS``);
* ``pgw_budget_spent_epsilon{consumer,dataset,purpose}`` and ``pgw_budget_remaining_epsilon{...}`` gauges;
* ``pgw_sandbox_up`` gauge (1 or 0);
* ``pgw_alerts_total{rule}`` counter: alert rules that fired (``budget_nearly_exhausted`` is built in:
  a grant's remaining epsilon fell to ``BUDGET_ALERT_FRACTION`` of its total or below);
* ``pgw_alerts_unacknowledged`` gauge: alerts in the state database no operator has acknowledged yet (read
  when scraped, through ``Metrics.unacknowledged_alerts``).

Labels never carry query text or values; consumers, datasets and purposes are operator-defined names.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["BUDGET_ALERT_FRACTION", "DURATION_BUCKETS", "Metrics", "escape_label_value"]

log = logging.getLogger("gateway.release.metrics")

# Seconds; from a refused request (~1 ms) to a query at the default 10 s sandbox limit.
DURATION_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BUDGET_ALERT_FRACTION = 0.1
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_HELP = {
    "pgw_requests_total": ("counter", "RPCs handled, by outcome and gRPC status code."),
    "pgw_request_duration_seconds": ("histogram", "RPC handling time in seconds."),
    "pgw_budget_spent_epsilon": ("gauge", "Epsilon spent on a grant (consumer x dataset x purpose)."),
    "pgw_budget_remaining_epsilon": ("gauge", "Epsilon remaining on a grant (consumer x dataset x purpose)."),
    "pgw_sandbox_up": ("gauge", "1 if the sandbox answered its last contact, else 0."),
    "pgw_alerts_total": ("counter", "Alert rules that fired."),
    "pgw_alerts_unacknowledged": ("gauge", "Alerts no operator has acknowledged yet."),
}


def escape_label_value(value: str) -> str:
    """Escapes a label value: backslash, double quote and newline (exposition format 0.0.4)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def _labels(names: Sequence[str], values: Iterable[str]) -> str:
    pairs = [f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True)]
    return "{" + ",".join(pairs) + "}" if pairs else ""


class Metrics:
    """The gateway's metrics registry. Every method is safe to call from any thread."""

    def __init__(self, buckets: Sequence[float] = DURATION_BUCKETS) -> None:
        """An empty registry with the given histogram buckets (ascending, finite)."""
        if list(buckets) != sorted(buckets) or not all(math.isfinite(b) for b in buckets):
            raise ValueError("histogram buckets must be finite and ascending")
        self._buckets = tuple(float(b) for b in buckets)
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str, str], int] = {}
        self._durations: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
        self._spent: dict[tuple[str, str, str], float] = {}
        self._remaining: dict[tuple[str, str, str], float] = {}
        self._low_budget: set[tuple[str, str, str]] = set()
        self._sandbox_up = 0.0
        self.unacknowledged_alerts: Callable[[], int] | None = None  # set by the server: the state database
        self._alerts: dict[str, int] = {}

    def observe_request(self, service: str, method: str, outcome: str, code: str, duration_s: float) -> None:
        """Counts one RPC and records its duration."""
        with self._lock:
            key = (service, method, outcome, code)
            self._requests[key] = self._requests.get(key, 0) + 1
            counts, total = self._durations.setdefault((service, method), ([0] * len(self._buckets), [0.0, 0]))
            for i, bound in enumerate(self._buckets):
                if duration_s <= bound:
                    counts[i] += 1
            total[0] += max(0.0, duration_s)
            total[1] += 1

    def set_budget(self, consumer: str, dataset: str, purpose: str, *, spent: float, remaining: float) -> None:
        """Sets a grant's spent/remaining epsilon; fires ``budget_nearly_exhausted`` when it crosses the line."""
        key = (consumer, dataset, purpose)
        total = spent + remaining
        low = total > 0 and remaining <= BUDGET_ALERT_FRACTION * total
        with self._lock:
            self._spent[key] = float(spent)
            self._remaining[key] = float(remaining)
            crossed = low and key not in self._low_budget
            if low:
                self._low_budget.add(key)
            else:
                self._low_budget.discard(key)
        if crossed:
            self.alert("budget_nearly_exhausted")
            log.warning("budget nearly exhausted", extra={"consumer": consumer, "dataset": dataset})

    def set_sandbox_up(self, up: bool) -> None:
        """Sets ``pgw_sandbox_up``."""
        with self._lock:
            self._sandbox_up = 1.0 if up else 0.0

    def alert(self, rule: str) -> None:
        """Counts one firing of an alert rule."""
        with self._lock:
            self._alerts[rule] = self._alerts.get(rule, 0) + 1

    def render(self) -> str:
        """The exposition text (HELP and TYPE for every family, then its samples)."""
        with self._lock:
            requests = sorted(self._requests.items())
            durations = sorted((k, (list(c), list(t))) for k, (c, t) in self._durations.items())
            spent = sorted(self._spent.items())
            remaining = sorted(self._remaining.items())
            sandbox_up = self._sandbox_up
            alerts = sorted(self._alerts.items())
        out: list[str] = []

        def family(name: str) -> None:
            kind, text = _HELP[name]
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")

        family("pgw_requests_total")
        for key, count in requests:
            out.append(f"pgw_requests_total{_labels(('service', 'method', 'outcome', 'code'), key)} {count}")
        family("pgw_request_duration_seconds")
        for (service, method), (counts, (total, n)) in durations:
            for bound, count in zip((*self._buckets, math.inf), (*counts, int(n)), strict=True):
                labels = _labels(("service", "method", "le"), (service, method, _format_value(bound)))
                out.append(f"pgw_request_duration_seconds_bucket{labels} {count}")
            base = _labels(("service", "method"), (service, method))
            out.append(f"pgw_request_duration_seconds_sum{base} {_format_value(total)}")
            out.append(f"pgw_request_duration_seconds_count{base} {int(n)}")
        for name, values in (("pgw_budget_spent_epsilon", spent), ("pgw_budget_remaining_epsilon", remaining)):
            family(name)
            for key3, value in values:
                out.append(f"{name}{_labels(('consumer', 'dataset', 'purpose'), key3)} {_format_value(value)}")
        family("pgw_sandbox_up")
        out.append(f"pgw_sandbox_up {_format_value(sandbox_up)}")
        family("pgw_alerts_total")
        for rule, count in alerts:
            out.append(f"pgw_alerts_total{_labels(('rule',), (rule,))} {count}")
        if self.unacknowledged_alerts is not None:
            try:
                pending = self.unacknowledged_alerts()
            except Exception:  # the state database is unreadable: leave the gauge out of this scrape
                log.warning("unacknowledged alerts not counted", exc_info=True)
            else:
                family("pgw_alerts_unacknowledged")
                out.append(f"pgw_alerts_unacknowledged {pending}")
        return "\n".join(out) + "\n"

    def serve(self, port: int = 0, host: str = "127.0.0.1") -> tuple[ThreadingHTTPServer, int]:
        """Serves ``GET /metrics`` in a daemon thread; port 0 picks one. Returns (server, bound port).

        Stop with ``server.shutdown(); server.server_close()``. Anything but ``/metrics`` is 404.
        """
        metrics = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/metrics":
                    self.send_error(404)
                    return
                body = metrics.render().encode("utf-8")
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("metrics http: " + format, *args)

        server = ThreadingHTTPServer((host, port), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, name="pgw-metrics", daemon=True)
        thread.start()
        return server, int(server.server_address[1])
