"""What the raw HTTP/2 client of :mod:`tests.h2abuse` is used for: idle streams held from a background thread,
a stalled handshake, a timed flood, and the command line
(``python -m tests.h2abuse_scenarios {rapid_reset,ping_flood,settings_flood,idle} --port N ...``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import ssl
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.h2abuse import _READ_CHUNK, DEFAULT_PATH, ClientTls, FloodReport, GoAway, H2AbuseClient


class IdleStreamHolder:
    """Idle streams held open from a background thread, for synchronous tests.

    ``connections`` connections each open ``streams_per_connection`` idle streams to ``path``, ignoring the
    server's SETTINGS_MAX_CONCURRENT_STREAMS as an attacker would (the server refuses the streams over it); the
    thread keeps reading (and acknowledging PINGs) until :meth:`stop`. :meth:`snapshot` tells what the server
    has done to them.
    """

    def __init__(self, host: str, port: int, tls: ClientTls, *, streams_per_connection: int,
                 connections: int = 1, path: str = DEFAULT_PATH, timeout: str | None = None) -> None:
        self._args = (host, port, tls)
        self._n, self._conns, self._path, self._timeout = streams_per_connection, connections, path, timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="h2abuse-idle", daemon=True)
        self.clients: list[H2AbuseClient] = []

    def start(self, timeout: float = 10.0) -> IdleStreamHolder:
        """Connect and open the streams; returns once every HEADERS frame has been written."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open(), self._loop).result(timeout)
        return self

    async def _open(self) -> None:
        for _ in range(self._conns):
            client = await H2AbuseClient.connect(*self._args)
            await client.open_idle_streams(self._n, self._path, timeout=self._timeout, ignore_limit=True)
            self.clients.append(client)

    def snapshot(self) -> IdleSnapshot:
        """Open streams, how the ended ones ended, and GOAWAYs/closes so far (thread-safe)."""
        async def read() -> IdleSnapshot:
            ends: Counter[str] = Counter()
            for c in self.clients:
                for end in c.stream_ends.values():
                    ends[f"{end.how}:{end.detail}"] += 1
            return IdleSnapshot(
                open_streams=sum(c.open_stream_count() for c in self.clients),
                ended=dict(ends),
                goaways=[c.goaway for c in self.clients if c.goaway is not None],
                closed=sum(c.closed.is_set() for c in self.clients),
            )
        return asyncio.run_coroutine_threadsafe(read(), self._loop).result(5.0)

    def stop(self) -> None:
        """Close every connection and stop the thread."""
        async def close_all() -> None:
            await asyncio.gather(*(c.close() for c in self.clients))
        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(close_all(), self._loop).result(10.0)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10.0)
        self._loop.close()

    def __enter__(self) -> IdleStreamHolder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass(frozen=True)
class IdleSnapshot:
    """State of held idle streams: how many are open, how the others ended (``"how:detail"`` -> count),
    GOAWAYs received and connections closed."""

    open_streams: int
    ended: dict[str, int]
    goaways: list[GoAway]
    closed: int


async def stalled_handshake(host: str, port: int, tls: ClientTls | None, timeout: float) -> float | None:
    """Connect and stall: with ``tls`` None, never send a TLS ClientHello; with ``tls``, complete TLS but never
    send the HTTP/2 preface. Returns the seconds until the server closed the connection, or None if it was still
    open after ``timeout``."""
    t0 = time.monotonic()
    ctx = None if tls is None else tls.ssl_context()
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx,
                                                   server_hostname=None if tls is None else tls.server_name)
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(_READ_CHUNK):
                pass
        return time.monotonic() - t0
    except (ConnectionError, OSError, ssl.SSLError):
        return time.monotonic() - t0
    except TimeoutError:
        return None
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), 2.0)


async def flood(host: str, port: int, tls: ClientTls, kind: str, seconds: float,
                path: str = DEFAULT_PATH, *, ack_pings: bool = True, rate: float | None = None) -> FloodReport:
    """Connect, run one flood (``rapid_reset``, ``ping_flood`` or ``settings_flood``) and close. ``rate`` caps
    a rapid reset's streams per second."""
    client = await H2AbuseClient.connect(host, port, tls, ack_pings=ack_pings)
    try:
        if kind == "rapid_reset":
            return await client.rapid_reset(seconds, path, rate=rate)
        if kind == "ping_flood":
            return await client.ping_flood(seconds)
        if kind == "settings_flood":
            return await client.settings_flood(seconds)
        raise ValueError(f"unknown flood kind {kind!r}")
    finally:
        await client.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m tests.h2abuse_scenarios {rapid_reset,ping_flood,settings_flood,idle} --port N ...``."""
    parser = argparse.ArgumentParser(prog="python -m tests.h2abuse_scenarios", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["rapid_reset", "ping_flood", "settings_flood", "idle"])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls-dir", type=Path, required=True, help="directory written by `pgw certs`")
    parser.add_argument("--client", default="analyst", help="client certificate name in --tls-dir")
    parser.add_argument("--path", default=DEFAULT_PATH)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--streams", type=int, default=70, help="idle: streams per connection")
    parser.add_argument("--connections", type=int, default=1, help="idle: connections")
    parser.add_argument("--no-ping-ack", action="store_true", help="do not acknowledge the server's PINGs")
    parser.add_argument("--rate", type=float, default=None, help="rapid_reset: streams per second (default: max)")
    args = parser.parse_args(argv)
    tls = ClientTls.from_pki(args.tls_dir, args.client)
    if args.kind == "idle":
        with IdleStreamHolder(args.host, args.port, tls, streams_per_connection=args.streams,
                              connections=args.connections, path=args.path) as holder:
            time.sleep(args.seconds)
            print(json.dumps(asdict(holder.snapshot()), indent=2))
        return 0
    report = asyncio.run(flood(args.host, args.port, tls, args.kind, args.seconds, args.path,
                               ack_pings=not args.no_ping_ack, rate=args.rate))
    print(json.dumps(report.as_dict(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
