"""Keeps the sandbox alive: after a lost connection or a hard-deadline timeout, replace the sandbox process.

An in-process DuckDB cannot always stop its own runaway work (FACTS.md 13: some expressions ignore
`max_execution_time`), so the process boundary is the last line of defence. When the gateway gives up on
a request at its hard deadline, or cannot reach the sandbox at all, it asks the supervisor to recover: if
the sandbox is dead or does not answer a health probe quickly, it is killed and started afresh (data is
re-loaded and locked down again). The victim request has already been answered with the uniform
execution error (and stays charged); the gateway keeps serving everyone else.
"""

from __future__ import annotations

import logging
import threading

from sandbox.client import SandboxClient, SandboxConnectionError, SandboxProcess, SandboxStartError

log = logging.getLogger("gateway.supervisor")

HEALTH_PROBE_TIMEOUT_S = 2.0


class SandboxSupervisor:
    """Restarts the sandbox process the gateway started, at most one recovery at a time."""

    def __init__(self, process: SandboxProcess | None, client: SandboxClient) -> None:
        """Supervise `process` (None: the sandbox is run by someone else; nothing to restart)."""
        self.process = process
        self.client = client
        self._lock = threading.Lock()
        self.restarts = 0

    def recover(self, *, hung: bool = False) -> None:
        """Replace the sandbox if it is dead, unhealthy, or (`hung`) stuck past the hard deadline."""
        if self.process is None:
            return
        with self._lock:
            if not hung and self.process.alive and self._probe():
                return
            log.warning("restarting the sandbox (hung=%s, alive=%s)", hung, self.process.alive)
            try:
                self.process.restart()
            except SandboxStartError:
                log.exception("the sandbox did not restart")
                return
            self.restarts += 1

    def recover_in_background(self, *, hung: bool = False) -> None:
        """`recover` on a daemon thread, so the failing request can be answered at once."""
        threading.Thread(target=self.recover, kwargs={"hung": hung}, daemon=True).start()

    def _probe(self) -> bool:
        """True if the sandbox answers a health probe quickly and reports itself locked down."""
        try:
            reply = self.client.health(HEALTH_PROBE_TIMEOUT_S)
        except SandboxConnectionError:
            return False
        return reply.serving and reply.locked_down
