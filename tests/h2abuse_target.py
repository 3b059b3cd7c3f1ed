"""A tiny gRPC server (mutual TLS) to aim :mod:`tests.h2abuse` at, and legitimate load to measure beside the abuse.

The server runs in its own process, so the attacker, the server and the legitimate clients do not share an
interpreter lock. It serves one unary method, :data:`ECHO_PATH` (bytes in, bytes out), whose handler waits
``work_ms`` (standing in for a call to the sandbox) and answers the request bytes. Three server kinds:

* ``aio``: ``grpc.aio.server`` with an ``async def`` handler;
* ``aio-thread``: ``grpc.aio.server(migration_thread_pool=...)`` with a plain ``def`` handler, which the asyncio
  server runs on the pool;
* ``sync``: ``grpc.server`` with a thread pool.

``python -m tests.h2abuse_target serve ...`` runs a server (its port on the first line of stdout, JSON);
``python -m tests.h2abuse_target load ...`` runs legitimate clients and prints their latencies (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent import futures
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import grpc

from gateway.rpc.server import HTTP2_OPTIONS

ECHO_PATH: Final = "/h2abuse.Probe/Echo"
_SERVICE, _METHOD = ECHO_PATH.strip("/").split("/")
ServerOptions = Sequence[tuple[str, int | str]]

#: The gateway's HTTP/2 server options (gateway/rpc/server.py says what each bounds; tests/h2abuse.md what was
#: measured).
RECOMMENDED_OPTIONS: Final[list[tuple[str, int | str]]] = list(HTTP2_OPTIONS)


def _credentials(tls_dir: Path) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [((tls_dir / "server.key").read_bytes(), (tls_dir / "server.crt").read_bytes())],
        root_certificates=(tls_dir / "ca.crt").read_bytes(), require_client_auth=True)


def _handlers(work_s: float, asynchronous: bool) -> grpc.GenericRpcHandler[bytes, bytes]:
    async def echo_async(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        await asyncio.sleep(work_s)
        return request

    def echo_sync(request: bytes, context: grpc.ServicerContext) -> bytes:
        time.sleep(work_s)
        return request

    handler = grpc.unary_unary_rpc_method_handler(echo_async if asynchronous else echo_sync)
    return grpc.method_handlers_generic_handler(_SERVICE, {_METHOD: handler})


async def _serve_aio(tls_dir: Path, options: ServerOptions, work_s: float, threads: int | None,
                     announce: threading.Event | None = None) -> None:
    pool = futures.ThreadPoolExecutor(max_workers=threads) if threads else None
    server = grpc.aio.server(migration_thread_pool=pool, options=list(options))
    server.add_generic_rpc_handlers((_handlers(work_s, asynchronous=pool is None),))
    port = server.add_secure_port("127.0.0.1:0", _credentials(tls_dir))
    await server.start()
    print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    await server.stop(0.5)


def _serve_sync(tls_dir: Path, options: ServerOptions, work_s: float, threads: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=list(options))
    server.add_generic_rpc_handlers((_handlers(work_s, asynchronous=False),))
    port = server.add_secure_port("127.0.0.1:0", _credentials(tls_dir))
    server.start()
    print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.stop(0.5).wait()


@dataclass
class ServerProcess:
    """A running target server: its port and process."""

    port: int
    process: subprocess.Popen[str]

    def rss_kib(self) -> int:
        """Resident memory of the server process (KiB), from /proc."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> float:
        """User + system CPU time the server process has used."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def target_server(tls_dir: Path, kind: str = "aio", options: ServerOptions = (), *, work_ms: float = 1.0,
                  threads: int = 64) -> Iterator[ServerProcess]:
    """Run a target server (``aio``, ``aio-thread`` or ``sync``) in a child process for the ``with`` block.

    ``threads`` sizes the pool of the ``sync`` and ``aio-thread`` kinds (64, as the gateway's ``max_workers``)."""
    cmd = [sys.executable, "-m", "tests.h2abuse_target", "serve", "--tls-dir", str(tls_dir), "--kind", kind,
           "--options", json.dumps(list(options)), "--work-ms", str(work_ms), "--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"target server exited with {proc.wait(5)}")
        yield ServerProcess(int(json.loads(line)["port"]), proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def echo_channel(tls_dir: Path, client: str, port: int) -> grpc.Channel:
    """An mTLS channel of its own (its own connection: no subchannel shared with other channels)."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=(tls_dir / "ca.crt").read_bytes(),
        private_key=(tls_dir / f"{client}.key").read_bytes(),
        certificate_chain=(tls_dir / f"{client}.crt").read_bytes())
    return grpc.secure_channel(f"localhost:{port}", creds, options=[("grpc.use_local_subchannel_pool", 1)])


@dataclass
class LoadResult:
    """Latencies (ms) of the successful legitimate calls and the status codes of the failed ones."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> int:
        """Successful calls."""
        return len(self.latencies_ms)

    def quantile(self, q: float) -> float:
        """The ``q`` quantile of the latencies (nearest rank), NaN if there were none."""
        if not self.latencies_ms:
            return float("nan")
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, max(0, round(q * len(xs)) - 1))]

    def summary(self) -> dict[str, object]:
        """Counts and p50/p90/p99/max in ms."""
        return {"ok": self.ok, "errors": self.errors,
                **{k: round(self.quantile(q), 2) for k, q in
                   (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))}}


def legit_load(tls_dir: Path, port: int, *, clients: int, seconds: float, client: str = "analyst",
               deadline_s: float = 5.0, payload: bytes = b"x" * 64) -> LoadResult:
    """``clients`` threads, each with its own connection, calling :data:`ECHO_PATH` back to back for ``seconds``.

    Each channel makes one warm-up call first (TLS handshake), not counted.
    """
    result = LoadResult()
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    channels = [echo_channel(tls_dir, client, port) for _ in range(clients)]
    for ch in channels:
        grpc.channel_ready_future(ch).result(timeout=10)
    start = threading.Barrier(clients)

    def worker(ch: grpc.Channel) -> None:
        call = ch.unary_unary(ECHO_PATH, request_serializer=None, response_deserializer=None)
        with suppress(grpc.RpcError):
            call(payload, timeout=deadline_s)
        start.wait()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t = time.perf_counter()
            try:
                call(payload, timeout=deadline_s)
            except grpc.RpcError as exc:
                with lock:
                    errors[exc.code().name] += 1
                continue
            with lock:
                result.latencies_ms.append((time.perf_counter() - t) * 1000)

    threads = [threading.Thread(target=worker, args=(ch,)) for ch in channels]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for ch in channels:
        ch.close()
    result.errors = dict(errors)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """``serve`` a target server, or run ``load`` against one."""
    parser = argparse.ArgumentParser(prog="python -m tests.h2abuse_target")
    sub = parser.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--tls-dir", type=Path, required=True)
    serve.add_argument("--kind", choices=["aio", "aio-thread", "sync"], default="aio")
    serve.add_argument("--options", default="[]", help="JSON list of [key, value] channel arguments")
    serve.add_argument("--work-ms", type=float, default=1.0)
    serve.add_argument("--threads", type=int, default=64)
    load = sub.add_parser("load")
    load.add_argument("--tls-dir", type=Path, required=True)
    load.add_argument("--port", type=int, required=True)
    load.add_argument("--clients", type=int, default=32)
    load.add_argument("--seconds", type=float, default=10.0)
    load.add_argument("--client", default="analyst")
    args = parser.parse_args(argv)
    if args.cmd == "load":
        res = legit_load(args.tls_dir, args.port, clients=args.clients, seconds=args.seconds, client=args.client)
        print(json.dumps(res.summary()))
        return 0
    options = [(str(k), v) for k, v in json.loads(args.options)]
    work_s = args.work_ms / 1000
    if args.kind == "sync":
        _serve_sync(args.tls_dir, options, work_s, args.threads)
    else:
        asyncio.run(_serve_aio(args.tls_dir, options, work_s, args.threads if args.kind == "aio-thread" else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "ECHO_PATH", "RECOMMENDED_OPTIONS", "LoadResult", "ServerProcess", "echo_channel", "legit_load", "target_server",
]
