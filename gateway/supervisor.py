"""Keeps the sandbox alive and the health service honest: probe on a timer, replace a dead or hung sandbox.

An in-process DuckDB cannot always stop its own runaway work (some expressions ignore
`max_execution_time`), so the process boundary is the last line of defence. The supervisor probes the
sandbox every `interval_s` (and at once when a request loses its connection or gives up at its hard
deadline); when the sandbox is dead or does not answer a health probe quickly, it reports NOT_SERVING
(`on_health`), kills it and starts a fresh one (data re-loaded and locked down again), and reports SERVING
once the new one answers. A victim request has already been answered with the uniform execution error
(and stays charged); the gateway keeps serving everything that does not need the sandbox.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sandbox.client import SandboxClient, SandboxConnectionError, SandboxProcess, SandboxStartError

log = logging.getLogger("gateway.supervisor")

HEALTH_PROBE_TIMEOUT_S = 2.0


class SandboxSupervisor:
    """Probes the sandbox, restarts the one the gateway started, and reports its health."""

    def __init__(self, process: SandboxProcess | None, client: SandboxClient) -> None:
        """Supervise `process` (None: the sandbox is run by someone else; it is probed, not restarted)."""
        self.process = process
        self.client = client
        self._lock = threading.Lock()
        self.restarts = 0
        self.healthy = True
        self.on_health: list[Callable[[bool], None]] = []
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._monitor: threading.Thread | None = None

    def _report(self, healthy: bool) -> None:
        if healthy == self.healthy:
            return
        self.healthy = healthy
        log.warning("sandbox %s", "serving again" if healthy else "not serving")
        for hook in list(self.on_health):
            try:
                hook(healthy)
            except Exception:
                log.exception("health hook failed")

    def recover(self, *, hung: bool = False) -> None:
        """Replace the sandbox if it is dead, unhealthy, or (`hung`) stuck past the hard deadline."""
        with self._lock:
            if not hung and (self.process is None or self.process.alive) and self._probe():
                self._report(True)
                return
            self._report(False)
            if self.process is None:
                return
            log.warning("restarting the sandbox (hung=%s, alive=%s)", hung, self.process.alive)
            try:
                self.process.restart()
            except SandboxStartError:
                log.exception("the sandbox did not restart")
                return
            self.restarts += 1
            if self._probe():
                self._report(True)

    def recover_in_background(self, *, hung: bool = False) -> None:
        """Probe (and recover) now, on the monitor thread if it runs, so the failing request is answered at once."""
        if hung or self._monitor is None:
            threading.Thread(target=self.recover, kwargs={"hung": hung}, daemon=True).start()
        else:
            self._wake.set()

    def start_monitor(self, interval_s: float) -> None:
        """Probe every `interval_s` on a daemon thread until `stop`."""
        if self._monitor is not None:
            return

        def watch() -> None:
            while not self._stop.is_set():
                self._wake.wait(interval_s)
                self._wake.clear()
                if self._stop.is_set():
                    return
                try:
                    self.recover()
                except Exception:
                    log.exception("sandbox health check failed")

        self._monitor = threading.Thread(target=watch, name="sandbox-supervisor", daemon=True)
        self._monitor.start()

    def stop(self) -> None:
        """Stop the monitor thread."""
        self._stop.set()
        self._wake.set()
        if self._monitor is not None:
            self._monitor.join(10)

    def _probe(self) -> bool:
        """True if the sandbox answers a health probe quickly and reports itself locked down."""
        try:
            reply = self.client.health(HEALTH_PROBE_TIMEOUT_S)
        except SandboxConnectionError:
            return False
        return reply.serving and reply.locked_down
