"""One gateway process for the throughput benchmark: `start_gateway` on settings given as JSON, serving a sandbox
started elsewhere (`start_sandbox` false), until SIGTERM.

Several of these may serve one port (gRPC binds with SO_REUSEPORT, the kernel spreads connections) and one state
directory (the ledger, audit log and release cache are SQLite files written in BEGIN IMMEDIATE transactions; each
process holds its own lease on its reservations, `gateway.path.settle`).

With `--profile FILE` every thread of the process runs under `cProfile` with a per-thread CPU clock
(`time.thread_time`, so time spent waiting for the GIL, a lock or a socket is not counted); the merged
statistics are written to FILE at SIGTERM.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import signal
import sys
import threading
import time
from types import FrameType
from typing import Any

__all__ = ["dump_profiles", "main"]

_profiles: list[cProfile.Profile] = []
_profiles_lock = threading.Lock()


def _start_thread_profile(frame: FrameType, event: str, arg: Any) -> None:
    """The first profile event of a new thread: give the thread its own CPU-clock profiler."""
    prof = cProfile.Profile(time.thread_time)
    with _profiles_lock:
        _profiles.append(prof)
    prof.enable()  # replaces this hook for the thread


def dump_profiles(path: str) -> None:
    """Stop every thread's profiler and write their merged statistics to `path`."""
    with _profiles_lock:
        profs = list(_profiles)
    stats: pstats.Stats | None = None
    for prof in profs:
        prof.disable()
        try:
            stats = pstats.Stats(prof) if stats is None else stats.add(prof)
        except TypeError:  # a thread that recorded nothing
            continue
    if stats is not None:
        stats.dump_stats(path)


def main(argv: list[str] | None = None) -> int:
    """Start the gateway, print `READY <port>`, serve until SIGTERM."""
    p = argparse.ArgumentParser(prog="python -m examples.bench.gwproc")
    p.add_argument("settings", help="settings overrides as a JSON object")
    p.add_argument("--profile", default=None, help="write merged per-thread CPU profiles here at exit")
    p.add_argument("--stages", default=None, help="write CPU seconds per request stage (JSON) here at exit")
    p.add_argument("--sandbox-pool", type=int, default=None,
                   help="idle sandbox connections kept for reuse (an experiment; default: the client's own)")
    args = p.parse_args(argv)
    if args.profile:
        threading.setprofile(_start_thread_profile)
        main_prof = cProfile.Profile(time.thread_time)
        _profiles.append(main_prof)
        main_prof.enable()

    from gateway.rpc.server import start_gateway
    from gateway.settings import load_settings

    settings = load_settings(json.loads(args.settings))
    if args.sandbox_pool is not None:
        from sandbox.client import SandboxClient

        SandboxClient.MAX_IDLE = args.sandbox_pool
    gw = start_gateway(settings)
    stages = None
    if args.stages:
        from examples.bench.cpustages import instrument

        stages = instrument(gw)
        from pathlib import Path

        stages.on_signals(Path(args.stages))
    stop = threading.Event()

    def on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    print(f"READY {gw.port} {os.getpid()}", flush=True)
    stop.wait()
    if args.profile:
        dump_profiles(args.profile)
    if stages is not None:
        from pathlib import Path

        stages.write(Path(args.stages))
    gw.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
