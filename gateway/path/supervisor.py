"""Keeps the sandbox alive and the health service honest: probe on a timer, replace a broken sandbox.

An in-process DuckDB cannot always stop its own runaway work (some expressions ignore
`max_execution_time`), so the process boundary is the last line of defence. Every `interval_s` (and at
once when a request loses its connection or gives up at its hard deadline) the supervisor diagnoses the
sandbox:

    dead          the process has exited (killed, crashed, out of memory)
    unreachable   a fresh connection to the socket path fails (the socket file was deleted or replaced);
                  pooled connections cannot show this, so probes never use the pool
    hung          a health probe is not answered in `probe_timeout_s`, twice (a wedged process; once
                  for a process stopped by a signal, seen in /proc on Linux), or a request gave up on
                  it at its hard deadline
    unlocked      it answers but does not report itself locked down

and for any of these it reports NOT_SERVING (`on_health`), removes the old process (SIGKILL when hung: a
stopped or wedged process cannot act on SIGTERM; SIGTERM with a short grace otherwise), starts a fresh one
(data re-loaded and locked down again) and reports SERVING once it answers. A start that fails is retried
with exponential backoff (`BACKOFF_S` doubling up to `MAX_BACKOFF_S`), each failure logged with the
sandbox's last lines, NOT_SERVING all the while; it never gives up. Requests in flight on the old process
fail with it (charged if they reached it, refunded if not; see `gateway.path.governed`). Each recovery's
duration, from the first failed diagnosis to SERVING, is kept in `recoveries` and logged.

A sandbox someone else runs (`start_sandbox = false`, or a sandbox on the data owner's host reached at
`sandbox_address` over mutual TLS) is probed and reported, never restarted: while it is down the gateway
reports NOT_SERVING and probes it again with exponential backoff (`BACKOFF_S` doubling up to
`REMOTE_MAX_BACKOFF_S`) on fresh connections; once it answers (restarted by its owner) the pooled
connections are dropped, SERVING is reported and the outage is kept in `recoveries`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sandbox.client import SandboxClient, SandboxConnectionError, SandboxProcess, SandboxStartError

log = logging.getLogger("gateway.path.supervisor")

HEALTH_PROBE_TIMEOUT_S = 2.0
BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
STOP_GRACE_S = 2.0
REMOTE_MAX_BACKOFF_S = 5.0


@dataclass(frozen=True, slots=True)
class Recovery:
    """One replacement: why, how long the sandbox was not serving, and the new process."""

    cause: str
    seconds: float
    attempts: int
    pid: int


class SandboxSupervisor:
    """Probes the sandbox, replaces the one the gateway started, and reports its health."""

    def __init__(self, process: SandboxProcess | None, client: SandboxClient, *,
                 probe_timeout_s: float = HEALTH_PROBE_TIMEOUT_S) -> None:
        """Supervise `process` (None: the sandbox is run by someone else; it is probed, not restarted)."""
        self.process = process
        self.client = client
        self.probe_timeout_s = probe_timeout_s
        self._lock = threading.Lock()
        self.restarts = 0
        self.healthy = True
        self.on_health: list[Callable[[bool], None]] = []
        self.recoveries: deque[Recovery] = deque(maxlen=100)
        self._generation = 0  # bumped whenever a replacement starts and ends: dates a "hung" report
        self._down_since: float | None = None
        self._cause = ""
        self._failures = 0  # failed starts in a row
        self._next_attempt = 0.0
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

    def recover(self, *, hung: bool = False, generation: int | None = None) -> None:
        """Diagnose the sandbox now and replace it if it is broken (see the module docstring).

        `hung`: a request gave up on the sandbox at its hard deadline; it is replaced without a probe
        (a runaway statement can leave the health thread answering), unless it has been replaced since
        `generation` (the value of `generation()` when the request failed).
        """
        with self._lock:
            if hung and generation is not None and generation != self._generation:
                hung = False  # that request was on a sandbox that has been replaced since
            if self.process is None and not hung and time.monotonic() < self._next_attempt:
                return  # a sandbox run by someone else is down: backing off before the next probe
            cause = "a request timed out on it" if hung else self._diagnose()
            if cause is None:
                if self.process is None and self._down_since is not None:
                    self._reconnected()
                self._failures = 0
                self._next_attempt = 0.0
                self._down_since = None
                self._report(True)
                return
            if self._down_since is None:
                self._down_since, self._cause = time.monotonic(), cause
                log.error("the sandbox is %s", cause)
            self._report(False)
            if self.process is None:
                self._failures += 1
                delay = min(REMOTE_MAX_BACKOFF_S, BACKOFF_S * 2 ** (self._failures - 1))
                self._next_attempt = time.monotonic() + delay
                log.warning("the sandbox is not answering (%s); probing again in %.1f s", cause, delay)
                return
            if time.monotonic() < self._next_attempt or self._stop.is_set():
                return  # backing off after a failed start, or the gateway is stopping
            self._replace(self.process, cause, hung=hung or cause.startswith("hung"))

    def _reconnected(self) -> None:
        """A sandbox run by someone else answers again: drop connections to its old process, keep the outage."""
        self.client.close()
        self._generation += 1
        down = self._down_since if self._down_since is not None else time.monotonic()
        recovery = Recovery(self._cause, time.monotonic() - down, self._failures, 0)
        self.recoveries.append(recovery)
        log.warning("the sandbox answers again %.2f s after it was found %s", recovery.seconds, recovery.cause)

    def generation(self) -> int:
        """Dates a failure: pass it back to `recover` with `hung`."""
        return self._generation

    def recover_in_background(self, *, hung: bool = False) -> None:
        """Diagnose (and recover) now, off the request's thread, so the failing request is answered at once."""
        if hung or self._monitor is None:
            generation = self._generation
            threading.Thread(target=self.recover, kwargs={"hung": hung, "generation": generation},
                             name="sandbox-recover", daemon=True).start()
        else:
            self._wake.set()

    def start_monitor(self, interval_s: float) -> None:
        """Diagnose every `interval_s` on a daemon thread until `stop`."""
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

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the monitor thread and wait (up to `timeout_s`) for a replacement in progress; none starts
        after this."""
        self._stop.set()
        self._wake.set()
        if self._monitor is not None:
            self._monitor.join(timeout_s)
        if self._lock.acquire(timeout=timeout_s):
            self._lock.release()

    # -- diagnosis and replacement ---------------------------------------------------------------------

    def _diagnose(self) -> str | None:
        """None if the sandbox is serving and locked down; otherwise what is wrong with it."""
        process = self.process
        if process is not None and not process.alive:
            code = process.proc.returncode if process.proc is not None else None
            return f"dead (exit code {code})"
        problem = ""
        for _ in range(2):  # one lost probe on a busy machine is not a verdict
            try:
                reply = self.client.health(self.probe_timeout_s, fresh=True)
            except SandboxConnectionError as exc:
                if exc.before_send:
                    problem = f"unreachable ({exc})"
                elif exc.timed_out:
                    problem = f"hung (no answer to a health probe in {self.probe_timeout_s:g} s)"
                    if process is not None and _stopped(process.pid):
                        return f"{problem}, stopped by a signal"
                else:
                    problem = f"broken ({exc})"
                if process is not None and not process.alive:
                    return "dead"
                continue
            if reply.serving and reply.locked_down:
                return None
            problem = "unlocked (it does not report itself locked down)"
        return problem

    def _replace(self, process: SandboxProcess, cause: str, *, hung: bool) -> None:
        """Remove the old process and start a new one (under the lock); back off if the start fails."""
        self._generation += 1
        old = process.pid
        if hung:
            process.kill()
        else:
            process.stop(STOP_GRACE_S)
        log.warning("replacing the sandbox (pid %d, %s); attempt %d", old, cause, self._failures + 1)
        try:
            process.restart()
        except SandboxStartError as exc:
            self._failures += 1
            delay = min(MAX_BACKOFF_S, BACKOFF_S * 2 ** (self._failures - 1))
            self._next_attempt = time.monotonic() + delay
            log.error("the sandbox did not start (attempt %d); next attempt in %.1f s, NOT_SERVING until "
                      "then: %s", self._failures, delay, exc)
            return
        finally:
            self.client.close()  # pooled connections lead to the old process
            self._generation += 1
        self.restarts += 1
        attempts, self._failures, self._next_attempt = self._failures + 1, 0, 0.0
        if self._diagnose() is None:
            down = self._down_since if self._down_since is not None else time.monotonic()
            recovery = Recovery(self._cause or cause, time.monotonic() - down, attempts, process.pid)
            self.recoveries.append(recovery)
            self._down_since = None
            log.warning("the sandbox was replaced (new pid %d) %.2f s after it was found %s", process.pid,
                        recovery.seconds, recovery.cause)
            self._report(True)


def _stopped(pid: int) -> bool:
    """True if the process is stopped by a signal (SIGSTOP, SIGTSTP) or a tracer (Linux /proc; else False)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] in (["T"], ["t"])
