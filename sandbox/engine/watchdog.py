"""One long-lived thread that interrupts DuckDB statements past their deadline.

A watchdog thread per statement cost about 0.7 ms of every request (thread start and join on a busy
2-core machine, contending for the GIL); this thread is started once and sleeps until the earliest
deadline, or for at most `_POLL_S`, so a statement due later than that need not wake it. An interrupt
that arrives while DuckDB is still binding or optimizing can be lost, so a statement past its deadline
is interrupted again every 50 ms until it is released.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

import duckdb

__all__ = ["Interruptible", "Watchdog"]

_REPEAT_S = 0.05
# An idle watchdog still wakes this often, so a new statement whose deadline is later than that needs no
# notify: no thread wake-up and GIL hand-off per statement (deadlines are seconds away).
_POLL_S = 1.0


class Interruptible(Protocol):
    """What the watchdog interrupts (a DuckDB cursor)."""

    def interrupt(self) -> None:
        """Interrupt the running statement."""


class Watchdog:
    """Interrupts watched cursors at their deadlines (monotonic clock), from one daemon thread."""

    def __init__(self) -> None:
        """An idle watchdog; its thread starts with the first `watch`."""
        self._cond = threading.Condition()
        self._due: dict[int, tuple[float, Interruptible]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._wake_at = float("inf")  # when the thread wakes next (it need not be woken for later deadlines)

    @contextmanager
    def watch(self, cursor: Interruptible, timeout_s: float) -> Iterator[None]:
        """Interrupt `cursor` if the body runs longer than `timeout_s` (and every 50 ms after that)."""
        token = next(self._ids)
        due = time.monotonic() + timeout_s
        with self._cond:
            self._due[token] = (due, cursor)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sandbox-watchdog", daemon=True)
                self._thread.start()
            if due < self._wake_at:  # waking the thread for nothing costs a GIL hand-off per statement
                self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                del self._due[token]

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                expired = [(t, c) for t, (due, c) in self._due.items() if due <= now]
                for token, cursor in expired:
                    self._due[token] = (now + _REPEAT_S, cursor)
                if not expired:
                    self._wake_at = min((due for due, _ in self._due.values()), default=now + _POLL_S)
                    self._wake_at = min(self._wake_at, now + _POLL_S)
                    self._cond.wait(self._wake_at - now)
                    self._wake_at = 0.0  # awake: every new deadline is seen on the next pass
                    continue
            for _, cursor in expired:
                with contextlib.suppress(duckdb.Error):  # the cursor closed between the check and the call
                    cursor.interrupt()
