"""The console's HTTPS listeners: uvicorn on an event loop thread of its own, the peer certificate in the scope.

Two listeners, each optional:

* `console_listen`: the console. TLS with the gateway's server certificate, and a client certificate of the
  gateway's CA REQUIRED in the handshake (`ssl.CERT_REQUIRED`, the same CA file as the gRPC port): a browser
  without one never gets an HTTP response. The verified certificate chain is put into the ASGI scope as the TLS
  extension (`scope["extensions"]["tls"]["client_cert_chain"]`, PEM), from which the app takes the identity.
* `console_public_listen`: the public transparency page only (its app has no other route). TLS with the same
  server certificate and NO client certificate asked for, so no identity exists there at all.

uvicorn does not fill the TLS extension itself; `_TLSH11Protocol` reads the peer certificate from the
connection's `ssl_object` once the handshake is done and hands each request of the connection to the app with
it. The peer certificate is never read from a header.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from gateway.errors import ConfigError
from gateway.rpc.local import LocalCalls
from gateway.settings import Settings

__all__ = ["ConsoleServer", "peer_chain"]

log = logging.getLogger("gateway.console")

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]]


def peer_chain(transport: asyncio.BaseTransport) -> list[str]:
    """The verified client certificate of a TLS connection as PEM (empty: none was presented or no TLS)."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return []
    der = ssl_object.getpeercert(binary_form=True)
    return [ssl.DER_cert_to_PEM_cert(der)] if der else []


class _TLSH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, with the connection's client certificate in every request's scope."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        chain = peer_chain(transport)
        inner: ASGIApp = self.app

        async def app(scope: Scope, receive: Callable[[], Awaitable[Any]],
                      send: Callable[[Any], Awaitable[None]]) -> None:
            if scope["type"] == "http":
                extensions = dict(scope.get("extensions") or {})
                extensions["tls"] = {"client_cert_chain": list(chain), "client_cert_error": None}
                scope["extensions"] = extensions
            await inner(scope, receive, send)

        self.app = app


def _bind(address: str, key: str) -> socket.socket:
    host, _, port = address.rpartition(":")
    try:
        sock = socket.create_server((host.strip("[]") or "127.0.0.1", int(port)), reuse_port=False)
    except (ValueError, OSError) as exc:
        raise ConfigError("settings", key, f"cannot bind {address!r}: {exc}") from exc
    return sock


@dataclass
class ConsoleServer:
    """The running listeners (see the module docstring)."""

    servers: list[uvicorn.Server]
    ports: dict[str, int]
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    tasks: list[Any] = field(default_factory=list)

    @property
    def port(self) -> int:
        """The console's port (0: not listening)."""
        return self.ports.get("console", 0)

    @property
    def public_port(self) -> int:
        """The public page's port (0: not listening)."""
        return self.ports.get("public", 0)

    @classmethod
    def start(cls, settings: Settings, local: LocalCalls, *, roles_of: Callable[[str], frozenset[str]] | None = None
              ) -> ConsoleServer:
        """Bind and serve the configured listeners (port 0 picks one).

        Raises:
            ConfigError: a listener cannot be bound or its TLS files are missing.
        """
        from gateway.console.routes import console_app, public_app

        tls = settings.tls_dir
        for name in ("ca.crt", "server.crt", "server.key"):
            if not (tls / name).is_file():
                raise ConfigError(str(tls / name), "-", "TLS file not found (run `pgw certs`)")
        plan: list[tuple[str, str, Any, ssl.VerifyMode]] = []
        if settings.console_listen:
            plan.append(("console", settings.console_listen,
                         console_app(local, roles_of or _no_roles, public=False), ssl.CERT_REQUIRED))
        if settings.console_public_listen:
            plan.append(("public", settings.console_public_listen, public_app(local), ssl.CERT_NONE))
        loop = asyncio.new_event_loop()
        servers: list[uvicorn.Server] = []
        ports: dict[str, int] = {}
        sockets: list[list[socket.socket]] = []
        for name, address, app, reqs in plan:
            sock = _bind(address, "console_listen" if name == "console" else "console_public_listen")
            ports[name] = sock.getsockname()[1]
            config = uvicorn.Config(
                app, http=_TLSH11Protocol, ws="none", lifespan="off", log_level="warning", access_log=False,
                ssl_certfile=str(tls / "server.crt"), ssl_keyfile=str(tls / "server.key"),
                ssl_ca_certs=str(tls / "ca.crt"), ssl_cert_reqs=int(reqs), ssl_context_factory=_tls12,
                server_header=False,
                date_header=True, timeout_keep_alive=30, limit_concurrency=256, h11_max_incomplete_event_size=16384,
            )
            servers.append(uvicorn.Server(config))
            sockets.append([sock])
        thread = threading.Thread(target=loop.run_forever, name="console", daemon=True)
        thread.start()
        console = cls(servers, ports, loop, thread)
        for server, socks in zip(servers, sockets, strict=True):
            console.tasks.append(asyncio.run_coroutine_threadsafe(server.serve(sockets=socks), loop))
        for server in servers:
            for _ in range(500):
                if server.started:
                    break
                threading.Event().wait(0.01)
        log.info("console listening on %s", ", ".join(f"{k} {v}" for k, v in ports.items()))
        return console

    def stop(self) -> None:
        """Stop serving (connections in flight get a moment to finish) and the loop thread."""
        for server in self.servers:
            server.should_exit = True
        for task in self.tasks:
            try:
                task.result(10)
            except Exception:
                log.debug("console listener stopped with an error", exc_info=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()


def _tls12(config: uvicorn.Config, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """uvicorn's context (certificates, client certificate requirement, CA), TLS 1.2 at least."""
    context = default()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _no_roles(identity: str) -> frozenset[str]:
    return frozenset()
