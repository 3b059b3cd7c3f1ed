"""CPU per request stage inside a gateway process, for the throughput benchmark: the gateway's own functions
wrapped with a per-thread CPU clock (`time.thread_time`: waiting for the GIL, a lock, the disk or the sandbox
is not counted), the totals written as JSON when the process stops. The wrappers cost about a microsecond
each, so unlike a profiler they leave the figures they measure nearly as they are."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["CpuStages", "instrument"]


class CpuStages:
    """CPU seconds and calls per stage, summed over every thread."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def wrap(self, owner: Any, attr: str, stage: str) -> None:
        """Replace `owner.attr` by a wrapper that adds its callers' thread CPU time to `stage`."""
        original: Callable[..., Any] = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            c0 = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                dt = time.thread_time() - c0
                with self._lock:
                    self.cpu[stage] = self.cpu.get(stage, 0.0) + dt
                    self.calls[stage] = self.calls.get(stage, 0) + 1

        setattr(owner, attr, timed)

    def wrap_context(self, owner: Any, attr: str, stage: str) -> None:
        """As `wrap`, for a method returning a context manager: the time of entering and leaving it."""
        original: Callable[..., Any] = getattr(owner, attr)
        stages = self

        class Timed:
            def __init__(self, cm: Any) -> None:
                self.cm = cm

            def __enter__(self) -> Any:
                c0 = time.thread_time()
                try:
                    return self.cm.__enter__()
                finally:
                    stages.add(stage, time.thread_time() - c0, 1)

            def __exit__(self, *exc: Any) -> Any:
                c0 = time.thread_time()
                try:
                    return self.cm.__exit__(*exc)
                finally:
                    stages.add(stage, time.thread_time() - c0, 0)

        setattr(owner, attr, lambda *a, **k: Timed(original(*a, **k)))

    def add(self, stage: str, dt: float, calls: int) -> None:
        """Add `dt` CPU seconds and `calls` calls to `stage`."""
        with self._lock:
            self.cpu[stage] = self.cpu.get(stage, 0.0) + dt
            self.calls[stage] = self.calls.get(stage, 0) + calls

    def write(self, path: Path) -> None:
        """The totals as JSON."""
        with self._lock:
            path.write_text(json.dumps({"cpu": self.cpu, "calls": self.calls}, indent=1))


def instrument(gw: Any) -> CpuStages:
    """Wrap the request path's stages of a running `gateway.rpc.server.Gateway`."""
    from gateway.products.query import convert

    s = CpuStages()
    core, path = gw.core, gw.path
    s.wrap_context(gw.gate, "session", "policy session (live snapshot, role, revocation)")
    s.wrap(gw.gate, "audit", "audit of refusals and non-charging calls (interceptor)")
    s.wrap(path, "release", "GovernedPath.release (everything below)")
    s.wrap(core, "price", "  authorise + analyze + price (QueryService.price)")
    s.wrap(core.plans, "analyze", "    analyzer (memoized)")
    s.wrap(core.plans, "price", "    OpenDP pricing (memo misses: epsilon differs per call)")
    s.wrap(path.governor, "reserve", "  ledger reserve (every level, BEGIN IMMEDIATE, no fsync)")
    s.wrap(path.sandbox, "call", "  sandbox round trip (gateway side: encode, socket, decode)")
    s.wrap(core, "respond", "  response building (QueryService.respond)")
    s.wrap(path.governor, "budget_status", "    budget status for the response")
    s.wrap(path, "_sign", "  receipt (canonical JSON + Ed25519)")
    s.wrap(path, "_complete", "  complete: charge + audit entry + release cache + outcome (one tx, fsync)")
    s.wrap(path.ledger, "complete", "    ledger complete (the transaction and its commit + fsync)")
    s.wrap(path.oversight.audit, "append_in", "      audit entry in it (pseudonymise, hash chain, MAC)")
    del convert
    return s
