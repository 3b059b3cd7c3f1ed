"""The sandbox's servers: length-prefixed JSON frames (`sandbox.protocol.wire`), one thread per connection,
several request/response frames per connection in sequence, on a Unix socket (`SandboxServer`, the
single-host default) or on TCP with mutual TLS under the data owner's CA (`SandboxTlsServer`, a sandbox on
the owner's host serving one or more gateways elsewhere; `sandbox.process.transport`).

Over TCP the TLS handshake runs on the connection's own thread (a slow or hostile peer never holds up
accepting others), within `HANDSHAKE_TIMEOUT_S`, and at most `MAX_CONNECTIONS` connections are open at
once. A peer without a client certificate from the owner's CA, with one from another CA, or speaking
plaintext is refused there, logged with its address and the reason, before a byte of a request is read; an
accepted one gets `GREETING` and is logged (debug) with its certificate's common name. Several gateways may
share one TLS sandbox: the owner's cap ledger serialises their charges
(`sandbox.engine.caps`).

The socket is created only after the engine has loaded the data and locked DuckDB, with mode 0600
in a directory the data owner controls. A starting server refuses a socket another server answers on
(two gateways must never share a sandbox by accident); a gateway that finds the orphan of a dead gateway
there asks it to stop first (`sandbox.process.lifecycle.ShutdownRequest`, honoured only by an orphan).

The server decodes requests only (`sandbox.protocol.messages.decode_request`): a malformed frame, a reply type,
an unknown type or field, or a value of the wrong type gets ErrorReply('bad_request'); an oversized frame
gets the same reply and closes the connection (its boundary is lost).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import socketserver
import ssl
import stat
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, assert_never

from sandbox.engine.engine import Engine
from sandbox.process.lifecycle import ParentTie, ShutdownReply, ShutdownRequest
from sandbox.process.transport import GREETING, TlsFiles, server_context, tls_failure
from sandbox.products import models
from sandbox.products.verification import Verifier
from sandbox.protocol.base import MAX_FRAME_BYTES, ProtocolError
from sandbox.protocol.messages import (
    DescribeRequest,
    ErrorReply,
    ExecuteRequest,
    HealthReply,
    HealthRequest,
    Reply,
    decode_request,
)
from sandbox.protocol.models import EvaluateRequest, TrainRequest
from sandbox.protocol.owner import CapUsageRequest, ReloadRequest
from sandbox.protocol.verification import DescribeTemplatesRequest, VerifyClaimsRequest
from sandbox.protocol.wire import encode_frame, frame_length

log = logging.getLogger("sandbox.server")
IDLE_TIMEOUT_S = 300.0
HANDSHAKE_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 512  # open TLS connections (each holds a thread); beyond it a new one is closed at once


def recv_exact(sock: socket.socket, n: int) -> bytes | None:
    """Read exactly `n` bytes; None if the peer closed the connection first."""
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


class _Handler(socketserver.BaseRequestHandler):
    server: SandboxServer | SandboxTlsServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        if isinstance(sock, ssl.SSLSocket) and not _handshake(sock, self.client_address):
            return
        sock.settimeout(IDLE_TIMEOUT_S)
        try:
            while True:
                header = recv_exact(sock, 4)
                if header is None:
                    return
                length = frame_length(header)
                if length > MAX_FRAME_BYTES:
                    sock.sendall(encode_frame(ErrorReply("bad_request", "frame too large")))
                    return
                body = recv_exact(sock, length)
                if body is None:
                    return
                try:
                    frame = encode_frame(self.server.dispatch(body))
                except Exception:  # a bug must not leak engine text: uniform failure
                    log.exception("request handling failed")
                    frame = encode_frame(ErrorReply("failed", ""))
                sock.sendall(frame)
        except OSError as exc:  # timeouts, resets: drop this connection only
            log.info("connection closed: %s", exc)


def _handshake(sock: ssl.SSLSocket, address: object) -> bool:
    """Complete the TLS handshake on an accepted connection; log and refuse a peer that fails it."""
    peer = ":".join(str(p) for p in address[:2]) if isinstance(address, tuple) else str(address)
    try:
        sock.settimeout(HANDSHAKE_TIMEOUT_S)
        sock.do_handshake()
        sock.sendall(GREETING)
    except ssl.SSLError as exc:
        log.warning("refused a connection: %s", tls_failure(exc, side="sandbox", peer=peer))
        return False
    except OSError as exc:
        log.warning("refused a connection from %s: TLS handshake did not complete (%s)", peer, exc)
        return False
    subject: Any = (sock.getpeercert() or {}).get("subject", ())
    names = [attr[1] for rdn in subject for attr in rdn if attr[0] == "commonName"]
    log.debug("gateway %s connected from %s", names[0] if names else "?", peer)
    return True


class _Serving:
    """What both servers answer: the engine's requests, health, and shutdown for an orphan."""

    engine: Engine
    verifier: Verifier
    tie: ParentTie

    if TYPE_CHECKING:
        def shutdown(self) -> None: ...  # socketserver.BaseServer's, first in the servers' MRO

    def dispatch(self, body: bytes) -> Reply:
        """Answer one frame body."""
        try:
            msg = decode_request(body)
        except ProtocolError as exc:
            return ErrorReply("bad_request", str(exc))
        if isinstance(msg, ExecuteRequest):
            return self.engine.execute(msg)
        if isinstance(msg, TrainRequest):
            return models.train(self.engine, msg)
        if isinstance(msg, EvaluateRequest):
            return models.evaluate(self.engine, msg)
        if isinstance(msg, DescribeRequest):
            return self.engine.describe()
        if isinstance(msg, ReloadRequest):
            return self.engine.reload()
        if isinstance(msg, CapUsageRequest):
            return self.engine.cap_usage(msg.datasets)
        if isinstance(msg, ShutdownRequest):
            return self._shutdown_if_orphaned()
        if isinstance(msg, DescribeTemplatesRequest | VerifyClaimsRequest):
            return self.verifier.handle(msg)
        if isinstance(msg, HealthRequest):
            return HealthReply(serving=True, locked_down=self.engine.verify(), pid=os.getpid(),
                               parent_pid=self.tie.parent_pid, orphaned=self.tie.orphaned)
        assert_never(msg)  # every request type is answered above (mypy checks it)

    def _shutdown_if_orphaned(self) -> ShutdownReply:
        """Stop serving if the gateway that started this sandbox is gone; refuse otherwise."""
        if not self.tie.orphaned:
            log.warning("shutdown request refused: the gateway (pid %d) is alive or none was named",
                        self.tie.parent_pid)
            return ShutdownReply(False)
        log.warning("shutdown requested: the gateway (pid %d) is gone", self.tie.parent_pid)
        threading.Thread(target=self.shutdown, daemon=True).start()
        return ShutdownReply(True)


class SandboxServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer, _Serving):
    """Serves one `Engine` on a Unix domain socket."""

    # The gateway opens one connection per request; socketserver's default backlog of 5 makes
    # concurrent connects fail with EAGAIN under load (seen with 40 concurrent requests).
    request_queue_size = 256
    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, socket_path: Path, engine: Engine, tie: ParentTie | None = None) -> None:
        """Bind `socket_path` (mode 0600) for `engine`; `tie` names the gateway this sandbox belongs to.

        Raises:
            OSError: the parent directory is missing, the path is not a socket, or another server
                answers on it.
        """
        self.engine = engine
        self.verifier = Verifier.for_engine(engine)  # verification templates (sandbox/products/verification.py)
        self.socket_path = socket_path
        self.tie = tie or ParentTie()
        _remove_stale(socket_path)
        old = os.umask(0o177)
        try:
            super().__init__(str(socket_path), _Handler)
        finally:
            os.umask(old)
        os.chmod(socket_path, 0o600)
        self._inode = socket_path.stat().st_ino

    def close_and_unlink(self) -> None:
        """Close the listening socket and remove its file, unless the path is now another server's."""
        self.server_close()
        with contextlib.suppress(FileNotFoundError):
            if self.socket_path.lstat().st_ino == self._inode:
                self.socket_path.unlink()


class SandboxTlsServer(socketserver.ThreadingMixIn, socketserver.TCPServer, _Serving):
    """Serves one `Engine` on host:port with mutual TLS under the data owner's CA (see the module docstring)."""

    request_queue_size = 256
    daemon_threads = True
    allow_reuse_address = True  # a restarted sandbox rebinds its port at once (TIME_WAIT)

    def __init__(self, address: tuple[str, int], tls: TlsFiles, engine: Engine) -> None:
        """Bind `address` (port 0 picks one, see `port`) for `engine`, presenting and requiring `tls`.

        Raises:
            OSError: the address cannot be bound, or a TLS file is missing.
            ssl.SSLError: a TLS file is unusable.
        """
        self.engine = engine
        self.verifier = Verifier.for_engine(engine)
        self.tie = ParentTie()  # a networked sandbox is the owner's service, tied to no gateway
        self.context = server_context(tls)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    @property
    def port(self) -> int:
        """The port bound."""
        return int(self.server_address[1])

    def process_request(self, request: socket.socket | tuple[bytes, socket.socket],
                        client_address: Any) -> None:
        """Serve the connection on a thread of its own, unless `MAX_CONNECTIONS` are open: then close it."""
        if not self._slots.acquire(blocking=False):
            log.warning("refused a connection from %s: %d connections are open", client_address, MAX_CONNECTIONS)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: socket.socket | tuple[bytes, socket.socket],
                               client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def get_request(self) -> tuple[socket.socket, object]:
        """Accept, and wrap for TLS without handshaking (the handshake runs on the connection's thread)."""
        sock, address = self.socket.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address

    def close_and_unlink(self) -> None:
        """Close the listening socket."""
        self.server_close()


def _remove_stale(path: Path) -> None:
    if not path.parent.is_dir():
        raise FileNotFoundError(f"socket directory {path.parent} does not exist")
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody listens: a stale socket from a previous run
        return
    finally:
        probe.close()
    raise FileExistsError(f"another server is listening on {path}")


def serve(server: SandboxServer | SandboxTlsServer, ready_line: str) -> None:
    """Print `ready_line`, serve until SIGTERM/SIGINT, then close (and remove a Unix socket's file)."""

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: shutting down", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        print(ready_line, flush=True)
        server.serve_forever(poll_interval=0.2)
    finally:
        server.close_and_unlink()
