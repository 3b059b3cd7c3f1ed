"""Admission control: no identity can occupy the server, and excess load is refused quickly, not queued forever.

At most `max_running` calls run at once (the worker threads they would use), at most
`max_running_per_identity` of them for one certificate identity. A call beyond either waits in a bounded
queue (at most `max_queued` calls, `max_queued_per_identity` per identity) for at most `queue_wait_s`;
when a slot frees, the longest-waiting call of the next identity in turn (round robin) takes it, so a
busy identity cannot starve a quiet one. A call that finds the queue full, or waits too long, is refused
with RESOURCE_EXHAUSTED and `google.rpc.RetryInfo` before anything is done for it.

An admitted call's work on the worker threads passes one more gate (`Admission.executing`): at most
`max_executing` steps run on worker threads at once (four per CPU core: a query's step waits for the sandbox
and the disk about half its time), the others wait on the event loop, in arrival order, holding no thread.
Python code holds the GIL, so more runnable threads than cores do not add throughput: they take turns on it
every switch interval, and a thread holding the ledger's write lock waits for the GIL behind all the others,
so everyone waits longer for the lock (a convoy: at 32 clients a query waited 300-670 ms per answer for the
ledger's write turns without the gate, 13-16 ms with it; BENCHMARKS.md "Throughput before and after"). The
gate refuses nothing itself (overload is refused by the admission above, whose running calls are all that can
wait here): a unary call's body waits at most until the call's deadline (then DEADLINE_EXCEEDED, nothing
done), any other step (a policy session, a step of a streaming body, which may follow a charge) until its turn.

Everything here runs on the server's event loop thread, so it needs no locks.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from gateway.errors import DeadlineExceededError, OverloadedError

__all__ = ["Admission", "AdmissionLimits"]


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """The admission limits (settings `max_workers`, `max_calls_per_identity`, `max_queued_calls`, ...)."""

    max_running: int = 64
    max_running_per_identity: int = 16
    max_queued: int = 256
    max_queued_per_identity: int = 64
    queue_wait_s: float = 2.0
    max_executing: int = 64


class Admission:
    """Fair, bounded admission of calls by certificate identity."""

    def __init__(self, limits: AdmissionLimits) -> None:
        """Admit calls within `limits`."""
        self.limits = limits
        self.running = 0
        self._running: dict[str, int] = {}
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()
        self._queued = 0
        self.refused = 0
        self.executing_now = 0
        self._executing_queue: deque[asyncio.Future[None]] = deque()

    def _can_run(self, identity: str) -> bool:
        return (self.running < self.limits.max_running
                and self._running.get(identity, 0) < self.limits.max_running_per_identity)

    def _start(self, identity: str) -> None:
        self.running += 1
        self._running[identity] = self._running.get(identity, 0) + 1

    def _refuse(self, why: str, reason: str) -> OverloadedError:
        self.refused += 1
        return OverloadedError(why, reason=reason, retry_after_s=min(1.0, self.limits.queue_wait_s))

    @asynccontextmanager
    async def slot(self, identity: str) -> AsyncIterator[None]:
        """Hold a running slot for `identity` for the body of the `async with`.

        Raises:
            OverloadedError: the queue is full, or no slot freed within `queue_wait_s`.
        """
        if self._can_run(identity) and not self._waiting.get(identity):
            self._start(identity)
        else:
            await self._wait(identity)
        try:
            yield
        finally:
            self._finish(identity)

    def _finish(self, identity: str) -> None:
        self.running -= 1
        left = self._running[identity] - 1
        if left:
            self._running[identity] = left
        else:
            del self._running[identity]
        self._dispatch()

    async def _wait(self, identity: str) -> None:
        queue = self._waiting.get(identity)
        if self._queued >= self.limits.max_queued:
            raise self._refuse("the gateway is busy; retry shortly", "SERVER_BUSY")
        if queue is not None and len(queue) >= self.limits.max_queued_per_identity:
            raise self._refuse("this identity has too many calls in flight; retry shortly",
                               "TOO_MANY_CONCURRENT_CALLS")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(identity, deque()).append(future)
        self._queued += 1
        try:
            await asyncio.wait_for(asyncio.shield(future), self.limits.queue_wait_s)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if future.done() and not future.cancelled():  # granted just as we gave up: hand it on
                self._finish(identity)
            else:
                future.cancel()
                self._forget(identity, future)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise self._refuse("the gateway is busy; retry shortly", "SERVER_BUSY") from None

    def _forget(self, identity: str, future: asyncio.Future[None]) -> None:
        queue = self._waiting.get(identity)
        if queue is not None and future in queue:
            queue.remove(future)
            self._queued -= 1
            if not queue:
                del self._waiting[identity]

    def _dispatch(self) -> None:
        """Give free slots to waiting calls, one identity after another (round robin)."""
        skipped = 0
        while self._waiting and self.running < self.limits.max_running and skipped < len(self._waiting):
            identity, queue = next(iter(self._waiting.items()))
            self._waiting.move_to_end(identity)
            if self._running.get(identity, 0) >= self.limits.max_running_per_identity:
                skipped += 1
                continue
            skipped = 0
            future = queue.popleft()
            self._queued -= 1
            if not queue:
                del self._waiting[identity]
            self._start(identity)
            future.set_result(None)

    @asynccontextmanager
    async def executing(self, *, deadline: float | None = None) -> AsyncIterator[None]:
        """Hold one of the `max_executing` turns on the worker threads for the body of the `async with`, waiting
        for one in arrival order; no longer than until `deadline` (`time.monotonic()`; None: as long as it takes).

        Raises:
            DeadlineExceededError: `deadline` passed before a turn came (then nothing ran).
        """
        if self.executing_now < self.limits.max_executing and not self._executing_queue:
            self.executing_now += 1
        else:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._executing_queue.append(future)
            try:
                if deadline is not None:
                    await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - time.monotonic()))
                else:
                    await asyncio.shield(future)
            except (TimeoutError, asyncio.CancelledError) as exc:
                if future.done() and not future.cancelled():  # handed a turn just as we gave up: pass it on
                    self._done_executing()
                else:
                    future.cancel()
                    self._executing_queue.remove(future)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise DeadlineExceededError("the call's deadline passed while it waited for a worker; nothing "
                                            "was charged") from None
        try:
            yield
        finally:
            self._done_executing()

    def _done_executing(self) -> None:
        """Hand the turn to the longest waiter, or free it."""
        while self._executing_queue:
            future = self._executing_queue.popleft()
            if not future.done():
                future.set_result(None)
                return
        self.executing_now -= 1
