"""The sandbox process under a per-thread CPU profile, for the throughput benchmark: `python -m
examples.bench.sbproc PROFILE_FILE <sandbox flags>` runs `sandbox.__main__.main` with every thread under
`cProfile` on a per-thread CPU clock (as `examples.bench.gwproc` does for the gateway) and writes the merged
statistics to PROFILE_FILE when the sandbox stops (SIGTERM). `python -m examples.bench.sbproc --stages FILE
<sandbox flags>` instead records CPU and wall time per request stage (`examples.bench.cpustages`)."""

from __future__ import annotations

import cProfile
import sys
import threading
import time

from examples.bench.gwproc import _profiles, _profiles_lock, _start_thread_profile, dump_profiles

__all__ = ["main"]


def main(argv: list[str]) -> int:
    """Profile the sandbox's main and every thread it starts."""
    if argv[0] == "--stages":
        from pathlib import Path

        from examples.bench.cpustages import instrument_sandbox

        stages = instrument_sandbox()
        stages.on_signals(Path(argv[1]))
        from sandbox.__main__ import main as sandbox_main

        try:
            return sandbox_main(argv[2:])
        finally:
            stages.write(Path(argv[1]))
    out, rest = argv[0], argv[1:]
    threading.setprofile(_start_thread_profile)
    prof = cProfile.Profile(time.thread_time)
    with _profiles_lock:
        _profiles.append(prof)
    prof.enable()
    from sandbox.__main__ import main as sandbox_main

    try:
        return sandbox_main(rest)
    finally:
        dump_profiles(out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
