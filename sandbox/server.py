"""The sandbox's Unix-socket server: length-prefixed JSON frames (`sandbox.protocol.wire`), one thread
per connection, several request/response frames per connection in sequence.

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
import stat
import threading
from pathlib import Path
from types import FrameType
from typing import assert_never

from sandbox.engine.engine import Engine
from sandbox.process.lifecycle import ParentTie, ShutdownReply, ShutdownRequest
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
    server: SandboxServer

    def handle(self) -> None:
        sock: socket.socket = self.request
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


class SandboxServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
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

    def close_and_unlink(self) -> None:
        """Close the listening socket and remove its file, unless the path is now another server's."""
        self.server_close()
        with contextlib.suppress(FileNotFoundError):
            if self.socket_path.lstat().st_ino == self._inode:
                self.socket_path.unlink()


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


def serve(server: SandboxServer, ready_line: str) -> None:
    """Print `ready_line`, serve until SIGTERM/SIGINT, then close and remove the socket."""

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
