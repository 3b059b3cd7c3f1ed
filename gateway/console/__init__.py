"""The web console: server-rendered pages over mTLS, every figure through the governed RPCs (`gateway.rpc.local`).

It sits on top of the gateway like the CLI: `start_console` starts its listeners next to a running gateway.
"""

from __future__ import annotations

from gateway.rpc.server import Gateway
from gateway.settings import Settings

__all__ = ["start_console"]


def start_console(gateway: Gateway, settings: Settings) -> None:
    """Start the listeners `settings` configures (`console_listen`, `console_public_listen`) on top of
    `gateway`, which stops them when it stops; nothing when neither is set.

    Raises:
        ConfigError: a listener cannot be bound or its TLS files are missing.
    """
    if not (settings.console_listen or settings.console_public_listen):
        return
    assert gateway.local is not None
    from gateway.console.server import ConsoleServer  # the web stack only when a listener is on

    gateway.console = ConsoleServer.start(settings, gateway.local, roles_of=gateway.roles_of)
