"""CPU and wall time per request stage, for the throughput benchmark: the gateway's (or the sandbox's) own
functions wrapped with a per-thread CPU clock (`time.thread_time`: waiting for the GIL, a lock, the disk or the
sandbox is not counted) and a wall clock (`time.perf_counter`: everything, waits included), the totals written
as JSON when the process stops, with the CPU of each thread group of the process (`/proc/self/task`: the event
loop thread, the body pool, gRPC's core threads). The wrappers cost about a microsecond each, so unlike a
profiler they leave the figures they measure nearly as they are.

`instrument(gw)` wraps a running gateway; `instrument_sandbox()` wraps the sandbox's classes and module
functions before its engine starts (`examples.bench.sbproc --stages`)."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["GATEWAY_STAGES", "SANDBOX_STAGES", "CpuStages", "instrument", "instrument_sandbox", "thread_groups"]

CLK_TCK = os.sysconf("SC_CLK_TCK")


def thread_groups() -> dict[str, float]:
    """CPU seconds of this process's threads so far, by thread name with its trailing number dropped."""
    out: dict[str, float] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        group = re.sub(r"[_-]?\d+$", "", name) or name
        out[group] = out.get(group, 0.0) + (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


class CpuStages:
    """CPU seconds, wall seconds and calls per stage, summed over every thread."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._threads0: dict[str, float] = {}
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Forget the totals so far (the threads' CPU counts from now on)."""
        with self._lock:
            self.cpu, self.wall, self.calls = {}, {}, {}
            self._threads0 = thread_groups()

    def on_signals(self, path: Path) -> None:
        """SIGUSR1 resets the totals, SIGUSR2 writes them to `path` (a measured window of the benchmark)."""
        import signal

        signal.signal(signal.SIGUSR1, lambda *_: self.reset())
        signal.signal(signal.SIGUSR2, lambda *_: self.write(path))

    def add(self, stage: str, dt: float, calls: int, wall: float = 0.0) -> None:
        """Add `dt` CPU seconds, `wall` seconds and `calls` calls to `stage`."""
        with self._lock:
            self.cpu[stage] = self.cpu.get(stage, 0.0) + dt
            self.wall[stage] = self.wall.get(stage, 0.0) + wall
            self.calls[stage] = self.calls.get(stage, 0) + calls

    def timed(self, original: Callable[..., Any], stage: str) -> Callable[..., Any]:
        """`original` wrapped: its callers' thread CPU time and wall time go to `stage`."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            c0, w0 = time.thread_time(), time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.add(stage, time.thread_time() - c0, 1, time.perf_counter() - w0)

        return timed

    def wrap(self, owner: Any, attr: str, stage: str) -> None:
        """Replace `owner.attr` (an instance, a class or a module) by its timed version."""
        setattr(owner, attr, self.timed(getattr(owner, attr), stage))

    def wrap_async(self, owner: Any, attr: str, stage: str) -> None:
        """As `wrap`, for a coroutine function: wall time only (its CPU is shared with the event loop's others)."""
        original: Callable[..., Any] = getattr(owner, attr)

        async def timed(*args: Any, **kwargs: Any) -> Any:
            w0 = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                self.add(stage, 0.0, 1, time.perf_counter() - w0)

        setattr(owner, attr, timed)

    def wrap_context(self, owner: Any, attr: str, stage: str, *, enter_only: bool = False) -> None:
        """As `wrap`, for a method returning a (sync or async) context manager: the time of entering and leaving
        it (`enter_only`: of entering it, e.g. waiting for a lock or an admission slot)."""
        original: Callable[..., Any] = getattr(owner, attr)
        stages = self

        class Timed:
            def __init__(self, cm: Any) -> None:
                self.cm = cm

            def __enter__(self) -> Any:
                c0, w0 = time.thread_time(), time.perf_counter()
                try:
                    return self.cm.__enter__()
                finally:
                    stages.add(stage, time.thread_time() - c0, 1, time.perf_counter() - w0)

            def __exit__(self, *exc: Any) -> Any:
                c0, w0 = time.thread_time(), time.perf_counter()
                try:
                    return self.cm.__exit__(*exc)
                finally:
                    if not enter_only:
                        stages.add(stage, time.thread_time() - c0, 0, time.perf_counter() - w0)

            async def __aenter__(self) -> Any:
                w0 = time.perf_counter()
                try:
                    return await self.cm.__aenter__()
                finally:
                    stages.add(stage, 0.0, 1, time.perf_counter() - w0)

            async def __aexit__(self, *exc: Any) -> Any:
                return await self.cm.__aexit__(*exc)

        setattr(owner, attr, lambda *a, **k: Timed(original(*a, **k)))

    def write(self, path: Path) -> None:
        """The totals as JSON (with the CPU of each thread group of this process)."""
        with self._lock:
            threads = {k: v - self._threads0.get(k, 0.0) for k, v in thread_groups().items()}
            data = {"cpu": self.cpu, "wall": self.wall, "calls": self.calls, "threads": threads}
        path.write_text(json.dumps(data, indent=1))


# The stages in the order they nest along a request (a deeper indent is a part of the stage above it).
GATEWAY_STAGES = (
    'interceptor: the whole unary call (wall, event loop)',
    '  identity (certificate CN)',
    '  admission slot wait (wall)',
    '  policy session (live snapshot, role, revocation)',
    '  GovernedPath.release (everything below)',
    '    authorise + analyze + price (QueryService.price)',
    '      analyzer (memoized)',
    '      OpenDP pricing (memo misses: epsilon differs per call)',
    '    ledger reserve (every level, BEGIN IMMEDIATE, no fsync)',
    '    sandbox round trip (gateway side: encode, socket, decode)',
    '    response building (QueryService.respond)',
    '      budget status for the response',
    '    receipt (canonical JSON + Ed25519)',
    '    complete: charge + audit entry + release cache + outcome (one tx, fsync)',
    '      ledger complete (wait for the write turn, the transaction, commit, fsync)',
    '        ledger write turn wait (all ledger writes, wall)',
    '        audit entry in it (pseudonymise, hash chain, MAC)',
    '  interceptor audit step (gate.audit; entry already written on the charged path)',
    '  worker-thread turn wait (max_executing, wall)',
)
SANDBOX_STAGES = (
    'dispatch (decode + execute; excl. socket and encode)',
    '  decode request (msgspec)',
    '  Engine.execute (everything below)',
    '    grade rules',
    '    compile plan to SQL',
    '    re-price (memoized)',
    "    owner's cap ledger charge (SQLite, fsync)",
    '    run + noise (release_rows)',
    '      guard (parse + allowlist)',
    '      DuckDB (guard + execute + fetch)',
    '      OpenDP noise (release_vector)',
    'encode reply frame (msgspec)',
)


def instrument(gw: Any) -> CpuStages:
    """Wrap the request path's stages of a running `gateway.rpc.server.Gateway`."""
    from gateway.rpc import interceptor as icpt

    s, G = CpuStages(), GATEWAY_STAGES
    core, path = gw.core, gw.path
    ic = gw.local.interceptor
    s.wrap_async(ic, "_serve_unary", G[0])
    s.wrap(icpt, "certificate_identity", G[1])
    s.wrap_context(gw.admission, "slot", G[2], enter_only=True)
    if hasattr(gw.admission, "executing"):
        s.wrap_context(gw.admission, "executing", G[18], enter_only=True)
    s.wrap_context(gw.gate, "session", G[3])
    s.wrap(gw.gate, "audit", G[17])
    s.wrap(path, "release", G[4])
    s.wrap(core, "price", G[5])
    s.wrap(core.plans, "analyze", G[6])
    s.wrap(core.plans, "price", G[7])
    s.wrap(path.governor, "reserve", G[8])
    s.wrap(path.sandbox, "call", G[9])
    s.wrap(core, "respond", G[10])
    s.wrap(path.governor, "budget_status", G[11])
    s.wrap(path, "_sign", G[12])
    s.wrap(path, "_complete", G[13])
    s.wrap(path.ledger, "complete", G[14])
    writers = getattr(path.ledger, "_writers", None)
    if writers is not None:
        s.wrap_context(writers, "turn", G[15], enter_only=True)
    s.wrap(path.oversight.audit, "append_in", G[16])
    return s


def instrument_sandbox() -> CpuStages:
    """Wrap the sandbox's request stages (call before its engine is built)."""
    from sandbox import server
    from sandbox.engine import engine, release

    s, S = CpuStages(), SANDBOX_STAGES
    s.wrap(server._Serving, "dispatch", S[0])
    s.wrap(server, "decode_request", S[1])
    s.wrap(engine.Engine, "execute", S[2])
    s.wrap(engine, "check_plan_grades", S[3])
    s.wrap(engine, "compile_dataset_plan", S[4])
    s.wrap(engine.Engine, "_price_memoized", S[5])
    s.wrap(engine.Engine, "charge_release", S[6])
    s.wrap(engine.Engine, "_release", S[7])
    s.wrap(engine, "check_select", S[8])
    s.wrap(engine.Engine, "run_guarded", S[9])
    s.wrap(release.mechanisms, "release_vector", S[10])
    s.wrap(server, "encode_frame", S[11])
    return s
