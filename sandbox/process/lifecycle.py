"""The sandbox's tie to the gateway that started it, and the shutdown message for an orphan.

A sandbox started by a gateway (`--parent-pid`) dies with it, so no orphan keeps the socket (and the data)
after its gateway is gone:

1. On Linux, `prctl(PR_SET_PDEATHSIG, SIGKILL)` asks the kernel to kill this process when its parent
   dies. The request races with a parent that dies while the child is starting, so right after it the
   child checks that its parent is still the pid it was given, and exits if not.
2. On every platform, a watchdog thread polls `os.getppid()` every `PARENT_POLL_S` and exits the process
   when it changes (the orphan was re-parented).

A sandbox started on its own (no `--parent-pid`) is tied to no one and never reports itself orphaned.

`ShutdownRequest` asks an orphaned sandbox to stop: a starting gateway that finds a live sandbox on its
socket sends it only when that sandbox's `HealthReply` says `orphaned`, and the sandbox honours it only
when it is orphaned at that moment, so no peer can stop the sandbox of a gateway that is alive.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass

from sandbox.protocol.messages import ShutdownReply, ShutdownRequest

__all__ = [
    "EXIT_ORPHANED",
    "PARENT_POLL_S",
    "ParentTie",
    "ShutdownReply",
    "ShutdownRequest",
    "tie_to_parent",
]

log = logging.getLogger("sandbox.process.lifecycle")

PARENT_POLL_S = 0.25
EXIT_ORPHANED = 3  # the exit code of a sandbox whose gateway is gone
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


@dataclass(frozen=True, slots=True)
class ParentTie:
    """The gateway this sandbox belongs to (`parent_pid` 0: started on its own, tied to no one)."""

    parent_pid: int = 0
    death_signal: bool = False  # the kernel kills this process with its parent (Linux prctl)

    @property
    def orphaned(self) -> bool:
        """True once the gateway that started this sandbox is gone (never for a standalone sandbox)."""
        return self.parent_pid != 0 and os.getppid() != self.parent_pid


def _set_parent_death_signal() -> bool:
    """`prctl(PR_SET_PDEATHSIG, SIGKILL)` on Linux; False where it is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
            return False
    except (OSError, AttributeError):
        log.warning("prctl is not available; the parent watchdog alone ties this process to its gateway")
        return False
    return True


def tie_to_parent(parent_pid: int, *, poll_s: float = PARENT_POLL_S) -> ParentTie:
    """Die with the process `parent_pid` (0: tie to no one). Exits at once if it is already gone.

    Call it first thing in the sandbox's main, before the data is loaded.
    """
    if parent_pid == 0:
        return ParentTie()
    death_signal = _set_parent_death_signal()
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        print(f"sandbox: the gateway (pid {parent_pid}) is gone; exiting", file=sys.stderr, flush=True)
        os._exit(EXIT_ORPHANED)
    tie = ParentTie(parent_pid, death_signal)

    def watch() -> None:
        stop = threading.Event()
        while not stop.wait(poll_s):
            if tie.orphaned:
                log.error("the gateway (pid %d) is gone; exiting", parent_pid)
                for handler in logging.getLogger().handlers:
                    handler.flush()
                os._exit(EXIT_ORPHANED)

    threading.Thread(target=watch, name="sandbox-parent-watch", daemon=True).start()
    return tie
