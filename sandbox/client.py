"""Talking to the sandbox process: `SandboxClient` (pooled connections) and `SandboxProcess`.

The client reaches the sandbox on a Unix socket (the single-host default) or over TCP with mutual TLS under
the data owner's CA (`sandbox.process.transport.TlsEndpoint`, a sandbox on the owner's host).

The gateway imports this module; it imports nothing of the engine (no DuckDB in the gateway).
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import select
import signal
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import IO, Any, TypeVar

from sandbox.process.lifecycle import ShutdownReply, ShutdownRequest
from sandbox.process.logformat import parse_line
from sandbox.process.transport import (
    GREETING,
    Endpoint,
    TlsEndpoint,
    TlsFiles,
    client_context,
    parse_address,
    tls_failure,
)
from sandbox.protocol.base import MAX_FRAME_BYTES, ProtocolError
from sandbox.protocol.messages import (
    CatalogInfo,
    DescribeRequest,
    ErrorReply,
    ExecuteRequest,
    ExecuteResult,
    HealthReply,
    HealthRequest,
    Message,
    Reply,
    decode_reply,
)
from sandbox.protocol.owner import CapUsageReply, CapUsageRequest, ReloadRequest
from sandbox.protocol.wire import encode_frame, frame_length

__all__ = [
    "Endpoint",
    "SandboxClient",
    "SandboxConnectionError",
    "SandboxProcess",
    "SandboxStartError",
    "TlsEndpoint",
    "TlsFiles",
    "parse_address",
    "reclaim_socket",
]

READY_PREFIX = "sandbox ready "
SANDBOX_LOG = logging.getLogger("sandbox")  # what the sandbox process writes to stderr
log = logging.getLogger("sandbox.client")
T = TypeVar("T")


class SandboxConnectionError(OSError):
    """The sandbox could not be reached, closed the connection, timed out or answered garbage.

    `before_send` is True when the request never reached the sandbox (connect failed), so the data was
    certainly not touched; the gateway refunds the reservation only then.
    """

    def __init__(self, message: str, *, before_send: bool = False, timed_out: bool = False) -> None:
        super().__init__(message)
        self.before_send = before_send
        self.timed_out = timed_out


class SandboxStartError(RuntimeError):
    """The sandbox process did not become ready."""


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SandboxConnectionError("sandbox did not answer in time", timed_out=True)
        sock.settimeout(remaining)
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise SandboxConnectionError("the sandbox closed the connection")
        buf += chunk
    return bytes(buf)


def _peer_closed(sock: socket.socket) -> bool:
    """True if an idle connection is unusable: the sandbox closed it (EOF readable) or sent stray bytes."""
    poller = select.poll()
    poller.register(sock, select.POLLIN | select.POLLERR | select.POLLHUP)
    try:
        return bool(poller.poll(0))
    except OSError:
        return True


class SandboxClient:
    """Thread-safe client over a small pool of persistent connections (one request at a time on each).

    A fresh connection per call cost a connect plus a new server thread per request (about 0.5 ms on a
    busy 2-core machine). An idle connection is checked before reuse (the sandbox may have restarted or
    closed it after its idle timeout); if sending on a reused connection fails, the sandbox never got
    the request (it reads a whole frame before it acts), so the call is retried once on a new
    connection. A connection that timed out or answered garbage is closed, never reused, and one idle
    for longer than `MAX_IDLE_S` (well under the sandbox's own idle timeout, `IDLE_TIMEOUT_S` = 300 s) is
    not reused either, so the sandbox never closes a connection under a request that was just sent.
    """

    MAX_IDLE = 8
    MAX_IDLE_S = 60.0

    def __init__(self, endpoint: Endpoint, timeout_s: float = 30.0) -> None:
        """Client for the sandbox at `endpoint` (a Unix socket path, or host:port with TLS); `timeout_s` is the
        default deadline.

        Raises:
            FileNotFoundError, ssl.SSLError: a TLS file of `endpoint` is missing or unusable.
        """
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._tls = client_context(endpoint.tls) if isinstance(endpoint, TlsEndpoint) else None
        self._idle: list[tuple[float, socket.socket]] = []  # (when it went idle, connection)
        self._lock = threading.Lock()

    def call(self, msg: Message, timeout_s: float | None = None, *, fresh: bool = False) -> Reply:
        """Send one message and return the reply.

        `fresh`: on a new connection, closed afterwards (a probe that must see whether the socket path
        still leads to a sandbox, which a pooled connection cannot tell).

        Raises:
            SandboxConnectionError: unreachable, closed, timed out, or a malformed reply.
        """
        budget = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + budget
        frame = encode_frame(msg)
        sock = None if fresh else self._checkout()
        reused = sock is not None
        try:
            if sock is None:
                sock = self._new_connection(deadline)
            try:
                sock.settimeout(max(deadline - time.monotonic(), 1e-3))
                sock.sendall(frame)
            except OSError:
                if not reused:
                    raise
                sock.close()  # a stale pooled connection: the request never reached the sandbox
                sock = self._new_connection(deadline)
                sock.settimeout(max(deadline - time.monotonic(), 1e-3))
                sock.sendall(frame)
            length = frame_length(_recv_exact(sock, 4, deadline))
            if length > MAX_FRAME_BYTES:
                raise SandboxConnectionError("reply frame too large")
            reply = decode_reply(_recv_exact(sock, length, deadline))
        except BaseException as exc:
            if sock is not None:
                sock.close()
            if isinstance(exc, SandboxConnectionError):
                raise
            if isinstance(exc, ProtocolError):
                raise SandboxConnectionError(f"malformed reply from the sandbox: {exc}") from exc
            if isinstance(exc, TimeoutError):
                raise SandboxConnectionError(f"sandbox did not answer: {exc}", timed_out=True) from exc
            if isinstance(exc, OSError):
                raise SandboxConnectionError(f"sandbox unreachable: {exc}") from exc
            raise
        if fresh:
            sock.close()
        else:
            self._checkin(sock)
        return reply

    def close(self) -> None:
        """Close the idle connections (later calls open new ones)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for _, sock in idle:
            sock.close()

    def _checkout(self) -> socket.socket | None:
        while True:
            with self._lock:
                if not self._idle:
                    return None
                since, sock = self._idle.pop()
            if time.monotonic() - since < self.MAX_IDLE_S and not _peer_closed(sock):
                return sock
            sock.close()

    def _checkin(self, sock: socket.socket) -> None:
        with self._lock:
            if len(self._idle) < self.MAX_IDLE:
                self._idle.append((time.monotonic(), sock))
                return
        sock.close()

    def _new_connection(self, deadline: float) -> socket.socket:
        if isinstance(self.endpoint, TlsEndpoint):
            return self._new_tls_connection(self.endpoint, deadline)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(max(deadline - time.monotonic(), 1e-3))
            self._connect(sock, deadline)
        except BaseException:
            sock.close()
            raise
        return sock

    def _new_tls_connection(self, endpoint: TlsEndpoint, deadline: float) -> socket.socket:
        """Connect over TCP and complete the TLS handshake within the deadline (nothing sent yet)."""
        assert self._tls is not None
        try:
            raw = socket.create_connection((endpoint.host, endpoint.port),
                                           timeout=max(deadline - time.monotonic(), 1e-3))
        except OSError as exc:
            raise SandboxConnectionError(f"sandbox at {endpoint} unreachable: {exc}", before_send=True) from exc
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            raw.settimeout(max(deadline - time.monotonic(), 1e-3))
            sock = self._tls.wrap_socket(raw, server_hostname=endpoint.host)
        except ssl.SSLError as exc:
            raw.close()
            raise SandboxConnectionError(tls_failure(exc, side="gateway", peer=str(endpoint)),
                                         before_send=True) from exc
        except OSError as exc:
            raw.close()
            raise SandboxConnectionError(f"sandbox at {endpoint}: TLS handshake failed: {exc}",
                                         before_send=True) from exc
        try:  # the sandbox has accepted our certificate once it greets (sandbox.process.transport)
            greeting = _recv_exact(sock, len(GREETING), deadline)
        except SandboxConnectionError as exc:
            sock.close()
            raise SandboxConnectionError(f"sandbox at {endpoint}: no greeting after the TLS handshake ({exc})",
                                         before_send=True, timed_out=exc.timed_out) from exc
        except ssl.SSLError as exc:
            sock.close()
            message = (f"the sandbox at {endpoint} closed the connection before accepting this gateway (it "
                       "refused the certificate, or it is stopping)" if isinstance(exc, ssl.SSLEOFError)
                       else tls_failure(exc, side="gateway", peer=str(endpoint)))
            raise SandboxConnectionError(message, before_send=True) from exc
        except OSError as exc:
            sock.close()
            raise SandboxConnectionError(f"sandbox at {endpoint}: connection lost after the TLS handshake: {exc}",
                                         before_send=True) from exc
        if greeting != GREETING:
            sock.close()
            raise SandboxConnectionError(f"sandbox at {endpoint} greeted with {greeting!r}: not a sandbox of "
                                         "this version", before_send=True)
        return sock

    def _connect(self, sock: socket.socket, deadline: float) -> None:
        """Connect, retrying briefly while the listen backlog is full (EAGAIN) within the deadline."""
        delay = 0.005
        while True:
            try:
                sock.connect(str(self.endpoint))
                return
            except BlockingIOError as exc:
                if time.monotonic() + delay >= deadline:
                    raise SandboxConnectionError(f"sandbox busy: {exc}", before_send=True) from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.2)
            except OSError as exc:
                raise SandboxConnectionError(f"sandbox unreachable: {exc}", before_send=True) from exc

    def describe(self) -> CatalogInfo:
        """The public catalog."""
        reply = self.call(DescribeRequest())
        if not isinstance(reply, CatalogInfo):
            raise SandboxConnectionError(f"unexpected reply to describe: {reply!r}")
        return reply

    def reload(self, timeout_s: float | None = None) -> CatalogInfo | ErrorReply:
        """Ask the sandbox to re-read its catalog and swap in the owner's new caps, grades and verification
        caps (`sandbox.protocol.owner.ReloadRequest`): the new public catalog, or the refusal (the sandbox
        then keeps its settings)."""
        reply = self.call(ReloadRequest(), timeout_s)
        if not isinstance(reply, CatalogInfo | ErrorReply):
            raise SandboxConnectionError(f"unexpected reply to reload: {type(reply).__name__}")
        return reply

    def cap_usage(self, datasets: tuple[str, ...] = (), timeout_s: float | None = None) -> CapUsageReply | ErrorReply:
        """The owner's caps and what the sandbox's cap ledger counts on them now (every dataset if empty)."""
        reply = self.call(CapUsageRequest(datasets), timeout_s)
        if not isinstance(reply, CapUsageReply | ErrorReply):
            raise SandboxConnectionError(f"unexpected reply to cap usage: {type(reply).__name__}")
        return reply

    def health(self, timeout_s: float | None = None, *, fresh: bool = False) -> HealthReply:
        """Liveness, lock-down state and the sandbox's tie to its gateway (`fresh`: see `call`)."""
        reply = self.call(HealthRequest(), timeout_s, fresh=fresh)
        if not isinstance(reply, HealthReply):
            raise SandboxConnectionError(f"unexpected reply to health: {reply!r}")
        return reply

    def execute(
        self, req: ExecuteRequest, timeout_s: float | None = None
    ) -> ExecuteResult | ErrorReply:
        """Run a plan; a refusal or uniform failure comes back as ErrorReply.

        Privacy: the reply holds only noisy values computed inside the sandbox.
        """
        reply = self.call(req, timeout_s)
        if not isinstance(reply, ExecuteResult | ErrorReply):
            raise SandboxConnectionError(f"unexpected reply to execute: {type(reply).__name__}")
        return reply


class _Spawner:
    """Starts child processes from one thread that lives as long as this process.

    Linux delivers a child's parent-death signal (`PR_SET_PDEATHSIG`) when the THREAD that forked it
    exits, not the process; a sandbox forked by a short-lived recovery thread would be killed with that
    thread. Every sandbox is therefore forked here.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = 0  # the process whose thread serves `_jobs` (a forked child starts its own)
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()

    def run(self, fn: Callable[[], T]) -> T:
        """`fn()` on the spawner thread; its result or exception."""
        future: Future[T] = Future()
        with self._lock:
            if self._pid != os.getpid():
                self._pid, self._jobs = os.getpid(), queue.SimpleQueue()
                threading.Thread(target=self._serve, args=(self._jobs,), name="sandbox-spawner",
                                 daemon=True).start()
            jobs = self._jobs
        jobs.put((fn, future))
        return future.result()

    @staticmethod
    def _serve(jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]]) -> None:
        while True:
            fn, future = jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller
                future.set_exception(exc)


_SPAWNER = _Spawner()


def reclaim_socket(path: Path, wait_s: float = 10.0) -> None:
    """Make `path` free for a new sandbox, or refuse while another gateway's sandbox serves on it.

    Nobody listening (or no file): nothing to do (the new sandbox removes a stale socket file itself). A
    sandbox that answers and reports itself orphaned (the gateway that started it is gone) is asked to
    stop (`ShutdownRequest`, which it honours only when orphaned), and the path is free once it has gone.
    A socket that accepts but does not answer (a sandbox being torn down) is probed again until
    `wait_s` has passed.

    Raises:
        SandboxStartError: a sandbox that is not orphaned (its gateway is alive, or it runs on its own)
            answers on `path`, or the path is still held after `wait_s`.
    """
    deadline = time.monotonic() + wait_s
    client = SandboxClient(path, timeout_s=2.0)
    asked = False
    while True:
        if not os.path.lexists(path) or not stat.S_ISSOCK(os.lstat(path).st_mode):
            return  # gone, or a file the new sandbox refuses to replace with a clear error
        try:
            reply = client.health(min(2.0, max(deadline - time.monotonic(), 0.05)), fresh=True)
        except SandboxConnectionError as exc:
            if exc.before_send:
                return  # nobody listens: a stale socket file
            reply = None  # accepted, no answer: a process being torn down (or hung)
        if reply is not None and not reply.orphaned:
            owner = f"started by pid {reply.parent_pid}" if reply.parent_pid else "started on its own"
            raise SandboxStartError(
                f"another sandbox (pid {reply.pid}, {owner}) serves on {path}: stop it, or give this "
                "gateway its own state directory / sandbox_socket")
        if reply is not None and not asked:
            log.warning("stopping the sandbox (pid %d) on %s: the gateway that started it (pid %d) is gone",
                        reply.pid, path, reply.parent_pid)
            try:
                answer = client.call(ShutdownRequest(), 2.0, fresh=True)
                asked = isinstance(answer, ShutdownReply) and answer.accepted
            except SandboxConnectionError:
                pass  # it went away meanwhile: probed again below
        if time.monotonic() >= deadline:
            raise SandboxStartError(f"the socket {path} is still held by a process that does not answer "
                                    f"after {wait_s:.0f} s")
        time.sleep(0.1)


class SandboxProcess:
    """A `python -m sandbox` child process owned by the caller, tied to this process's life.

    The child gets `--parent-pid` (it dies with this process, `sandbox.process.lifecycle`) and `--log-format json`;
    every line it writes to stderr is forwarded to this process's logger `sandbox` at the line's level,
    with the sandbox's request id (`request_id`, and `consumer` for ids of the form `consumer/id`), and the
    last `STDERR_TAIL` lines are kept for start-up errors.
    """

    STDERR_TAIL = 200

    def __init__(
        self,
        catalog: Path,
        socket_path: Path,
        data_dir: Path | None = None,
        extra_args: list[str] | None = None,
        ready_timeout_s: float = 120.0,
    ) -> None:
        """Describe the process; `start` (or the classmethod `SandboxProcess.start`) launches it."""
        self.catalog = catalog
        self.socket_path = socket_path
        self.data_dir = data_dir
        self.extra_args = list(extra_args or [])
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen[str] | None = None
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=self.STDERR_TAIL)

    @classmethod
    def start(
        cls,
        catalog: Path,
        socket: Path,
        data_dir: Path | None = None,
        extra_args: list[str] | None = None,
        ready_timeout_s: float = 120.0,
    ) -> SandboxProcess:
        """Spawn the sandbox and wait for its ready line.

        Raises:
            SandboxStartError: another gateway's sandbox holds the socket, or the child exited or did not
                print the ready line in time.
        """
        p = cls(catalog, socket, data_dir, extra_args, ready_timeout_s)
        p._spawn()
        return p

    @property
    def alive(self) -> bool:
        """True while the child process runs."""
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        """The child's pid (0 if not started)."""
        return self.proc.pid if self.proc else 0

    def client(self, timeout_s: float = 30.0) -> SandboxClient:
        """A client for this process's socket."""
        return SandboxClient(self.socket_path, timeout_s)

    def command(self) -> list[str]:
        """The child's command line."""
        cmd = [sys.executable, "-m", "sandbox", "--catalog", str(self.catalog)]
        cmd += ["--socket", str(self.socket_path)]
        if self.data_dir is not None:
            cmd += ["--data-dir", str(self.data_dir)]
        cmd += ["--parent-pid", str(os.getpid()), "--log-format", "json"]
        return cmd + self.extra_args

    def _spawn(self) -> None:
        reclaim_socket(self.socket_path)
        cmd = self.command()
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        self.stderr_tail.clear()
        proc = _SPAWNER.run(lambda: subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, bufsize=1))
        self.proc = proc
        ready = threading.Event()
        assert proc.stdout is not None and proc.stderr is not None
        threading.Thread(target=self._drain_stdout, args=(proc.stdout, ready), daemon=True).start()
        threading.Thread(target=self._drain_stderr, args=(proc.stderr,), daemon=True).start()
        deadline = time.monotonic() + self.ready_timeout_s
        while not ready.wait(0.05):
            if proc.poll() is not None or time.monotonic() > deadline:
                if proc.poll() is None:
                    self.stop()
                else:
                    proc.wait()
                time.sleep(0.1)  # let the stderr reader catch the last lines
                tail = "".join(list(self.stderr_tail)[-30:])
                raise SandboxStartError(
                    f"sandbox did not become ready (exit code {proc.returncode}):\n{tail}"
                )

    def _drain_stdout(self, stream: IO[str], ready: threading.Event) -> None:
        for line in stream:
            if line.startswith(READY_PREFIX):
                ready.set()

    def _drain_stderr(self, stream: IO[str]) -> None:
        for line in stream:
            self.stderr_tail.append(line)
            forward_log_line(line)

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `grace_s`; waits for the child."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL (a hung or stopped process cannot act on SIGTERM); waits for the child."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait()

    def restart(self) -> None:
        """Stop the child (if running) and start a fresh one with the same arguments."""
        self.stop()
        self._spawn()


def forward_log_line(line: str) -> None:
    """Log one line the sandbox wrote to stderr on logger `sandbox` (see `SandboxProcess`)."""
    parsed = parse_line(line)
    if not parsed.message or not SANDBOX_LOG.isEnabledFor(parsed.level):
        return
    extra: dict[str, object] = {}
    if parsed.request_id is not None:
        consumer, sep, rest = parsed.request_id.partition("/")
        # The gateway names sandbox requests `consumer/request id`; consumer names never hold a slash.
        extra.update({"consumer": consumer, "request_id": rest} if sep and consumer and rest
                     else {"request_id": parsed.request_id})
    record = SANDBOX_LOG.makeRecord(SANDBOX_LOG.name, parsed.level, "(sandbox)", 0, parsed.message, (), None,
                                    extra=extra)
    if parsed.created is not None:
        record.created = parsed.created
        record.msecs = (parsed.created - int(parsed.created)) * 1000
    SANDBOX_LOG.handle(record)
