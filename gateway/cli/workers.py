"""`pgw serve --workers N`: one sandbox process and N gateway processes serving one port.

The gateway's Python work per request (TLS and HTTP/2 aside, policy session, pricing, ledger, receipt, audit)
holds one interpreter's GIL; N processes use N cores. The master process:

* starts the sandbox once (every worker reaches it over its Unix socket; the sandbox serves each connection on
  its own thread, and DuckDB releases the GIL while it computes);
* reserves the listening port with a bound, never-listening SO_REUSEPORT socket (so port 0 picks one port for
  all workers and nobody else can take it between the workers' starts), then starts the workers one after
  another, each `pgw serve` on that port with `start_sandbox` off; gRPC binds with SO_REUSEPORT, and the kernel
  spreads incoming connections over the workers;
* only the first worker runs the web console and the metrics endpoint (a second bind would fail);
* relays each worker's output prefixed by `worker <i>:`; forwards SIGHUP (policy reload) and SIGTERM/SIGINT;
* restarts a worker that died. What the dead worker had reserved is settled by the other workers' settlers once
  its lease runs out (`gateway.path.settle`): every charge keeps a definite outcome and its audit entry.

The workers share the state directory: the ledger, the audit log and the release cache are SQLite files written
in BEGIN IMMEDIATE transactions, so the budgets hold across processes exactly as across threads.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from gateway.errors import ConfigError
from gateway.settings import Settings
from sandbox.client import SandboxProcess

__all__ = ["serve_workers"]

log = logging.getLogger("gateway.cli.workers")

READY_PREFIX = "gateway ready port="
RESTART_BACKOFF_S = 1.0


def _reserve_port(listen: str) -> tuple[socket.socket, str, int]:
    """Bind (never listen) `host:port` with SO_REUSEPORT; the socket keeps the port for the workers."""
    host, _, port_text = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    try:
        port = int(port_text)
    except ValueError as exc:
        raise ConfigError("settings", "listen", f"has value {listen!r}. Not host:port.") from exc
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError("settings", "listen", f"cannot bind {listen!r}: {exc.strerror}") from exc
    bound_port = int(sock.getsockname()[1])
    shown_host = f"[{host}]" if family == socket.AF_INET6 else host
    return sock, f"{shown_host}:{bound_port}", bound_port


class _Worker:
    """One `pgw serve` child and the thread relaying its output."""

    def __init__(self, index: int, argv: list[str], env: dict[str, str]) -> None:
        self.index = index
        self.argv = argv
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.ready = threading.Event()

    def start(self, timeout_s: float) -> None:
        self.ready.clear()
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env=self.env)
        threading.Thread(target=self._relay, args=(self.proc,), daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not self.ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway worker {self.index} did not start (exit status {self.proc.poll()})")

    def _relay(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(READY_PREFIX):
                self.ready.set()
            sys.stdout.write(f"worker {self.index}: {line}")
            sys.stdout.flush()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signum)

    def wait(self, timeout_s: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def serve_workers(settings: Settings, workers: int, worker_args: Sequence[str]) -> int:
    """Run the sandbox and `workers` gateway processes on `settings.listen` until SIGINT/SIGTERM.

    `worker_args` are the `pgw serve` flags every worker gets (policy, state directory, ...), without
    `--listen`, `--workers` and the console's and metrics' flags, which are decided here.
    """
    reservation, listen, port = _reserve_port(settings.listen)
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    sandbox: SandboxProcess | None = None
    socket_path = settings.sandbox_socket
    if settings.spawns_sandbox:  # a remote sandbox (`sandbox_address`): every worker dials it itself
        from gateway.rpc.server import sandbox_args

        sandbox = SandboxProcess.start(settings.catalog, socket_path, settings.data_dir, sandbox_args(settings),
                                       ready_timeout_s=float(settings.sandbox_ready_timeout_s))
    env = {**os.environ, "PRIVACY_GATEWAY_START_SANDBOX": "false",
           "PRIVACY_GATEWAY_SANDBOX_SOCKET": str(socket_path), "PYTHONUNBUFFERED": "1"}
    base = [sys.executable, "-m", "gateway", "serve", *worker_args, "--listen", listen]
    first_only: list[str] = []
    if settings.metrics_port >= 0:
        first_only += ["--metrics-port", str(settings.metrics_port)]
    if settings.console_listen:
        first_only += ["--console-listen", settings.console_listen]
    if settings.console_public_listen:
        first_only += ["--console-public-listen", settings.console_public_listen]
    console_env = ("PRIVACY_GATEWAY_CONSOLE_LISTEN", "PRIVACY_GATEWAY_CONSOLE_PUBLIC_LISTEN")
    pool = [_Worker(i, base + (first_only if i == 0 else ["--metrics-port", "-1"]),
                    env if i == 0 else {k: v for k, v in env.items() if k not in console_env})
            for i in range(workers)]
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    def reload(signum: int, frame: object) -> None:
        for w in pool:
            w.signal(signal.SIGHUP)

    signal.signal(signal.SIGHUP, reload)
    try:
        for w in pool:  # one after another: the first creates the keys and the stores' schemas
            w.start(timeout_s=300)
        pids = " ".join(str(w.proc.pid) for w in pool if w.proc is not None)
        print(f"{READY_PREFIX}{port} pid={os.getpid()} workers={workers} worker_pids={pids}", flush=True)
        while not stop.wait(0.2):
            for w in pool:
                if not w.alive() and not stop.is_set():
                    status = w.proc.returncode if w.proc is not None else None
                    log.error("gateway worker %d exited (status %s); restarting it", w.index, status)
                    print(f"worker {w.index} exited status={status}; restarting", flush=True)
                    time.sleep(RESTART_BACKOFF_S)
                    try:
                        w.start(timeout_s=300)
                    except RuntimeError as exc:
                        log.error("%s", exc)
        print("stopping", flush=True)
    finally:
        for w in pool:
            w.signal(signal.SIGTERM)
        for w in pool:
            w.wait(30)
        if sandbox is not None:
            sandbox.stop()
        reservation.close()
    return 0


def worker_argv(argv: Sequence[str]) -> list[str]:
    """`pgw serve` flags without those the master decides per worker (listen, workers, console, metrics)."""
    drop_with_value = {"--listen", "--workers", "--metrics-port", "--console-listen", "--console-public-listen"}
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in drop_with_value:
            skip = "=" not in arg
            continue
        out.append(arg)
    return out

