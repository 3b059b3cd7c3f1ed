"""`LocalCalls`: the gateway's unary RPCs called in-process, through exactly the governance a gRPC call gets.

The web console (`gateway.console`) calls the gateway only through `LocalCalls.invoke(method, request,
identity)`: the method's registered `Body` runs under `GovernanceInterceptor.invoke` on the gRPC server's
own event loop, worker pool and admission queues, so a page's data passes the same deadline, identity check,
admission, policy session (live snapshot, role, revocation), request limits and audit entry as the same call
over gRPC, and its refusals are the same `GatewayError`s. The identity is the common name of the client
certificate the caller's TLS layer verified against the gateway's CA; nothing else names it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from gateway.errors import GatewayInternalError
from gateway.rpc.interceptor import Body, GovernanceInterceptor
from gateway.rpc.methods import RULES, MethodRule

__all__ = ["LocalCalls"]


class LocalCalls:
    """In-process calls of the gateway's unary methods (see the module docstring)."""

    def __init__(self, interceptor: GovernanceInterceptor, loop: asyncio.AbstractEventLoop,
                 bodies: Mapping[tuple[str, str], Body], *, rules: Mapping[str, MethodRule] = RULES) -> None:
        """Run `bodies` (by (service, method)) under `interceptor` on `loop`, the gRPC server's event loop."""
        self.interceptor = interceptor
        self.loop = loop
        self._methods: dict[str, tuple[Body, MethodRule]] = {}
        for rule in rules.values():
            body = bodies.get((rule.service, rule.method))
            if body is not None and body.kind == "unary" and not (rule.client_streaming or rule.server_streaming):
                self._methods[f"{rule.service}/{rule.method}"] = (body, rule)

    def methods(self) -> list[str]:
        """The `Service/Method` names that may be invoked."""
        return sorted(self._methods)

    def rule(self, method: str) -> MethodRule:
        """The access rule of `method` (`Service/Method`).

        Raises:
            GatewayInternalError: no such unary gateway method.
        """
        entry = self._methods.get(method)
        if entry is None:
            raise GatewayInternalError(f"{method} is not a unary gateway method")
        return entry[1]

    async def invoke(self, method: str, request: Any, identity: str | None, *, timeout_s: float = 60.0) -> Any:
        """Call `method` (`Service/Method`) with `request` as `identity` (None: no client certificate) and
        return its response, from any event loop or thread's loop.

        Raises:
            GatewayError: what the same gRPC call would have returned as its status (already audited).
        """
        body, rule = self._methods.get(method) or (None, None)
        if body is None or rule is None:
            raise GatewayInternalError(f"{method} is not a unary gateway method")
        coro = self.interceptor.invoke(body, rule, request, identity, timeout_s)
        if asyncio.get_running_loop() is self.loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def call(self, method: str, request: Any, identity: str | None, *, timeout_s: float = 60.0) -> Any:
        """`invoke` from a thread that runs no event loop (tests, scripts)."""
        body, rule = self._methods.get(method) or (None, None)
        if body is None or rule is None:
            raise GatewayInternalError(f"{method} is not a unary gateway method")
        coro = self.interceptor.invoke(body, rule, request, identity, timeout_s)
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s + 5)
