"""HTTP/2 abuse against a real grpc.aio server with mutual TLS: what the recommended options bound, and what not.

The server is :mod:`tests.h2abuse_target` in a child process (real certificates from ``gateway.identity.certs``); the
attacker is :mod:`tests.h2abuse`. Findings and figures: tests/h2abuse.md.
"""

from __future__ import annotations

import asyncio
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from gateway.identity import certs
from tests.h2abuse import ClientTls, H2AbuseClient
from tests.h2abuse_scenarios import IdleStreamHolder, flood, stalled_handshake
from tests.h2abuse_target import ECHO_PATH, RECOMMENDED_OPTIONS, ServerProcess, echo_channel, target_server

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A development PKI with a legitimate client and an attacker (both valid certificates of the same CA)."""
    d = tmp_path_factory.mktemp("h2pki")
    certs.write_dev_pki(d, clients=["analyst", "attacker"])
    return d


@pytest.fixture(scope="module")
def attacker(tls_dir: Path) -> ClientTls:
    """The attacker's TLS identity: a valid client certificate, as an insider or a stolen key would have."""
    return ClientTls.from_pki(tls_dir, "attacker")


@pytest.fixture(scope="module")
def server(tls_dir: Path) -> Iterator[ServerProcess]:
    """An aio server with the recommended options."""
    with target_server(tls_dir, "aio", RECOMMENDED_OPTIONS) as srv:
        yield srv


def with_overrides(overrides: dict[str, int]) -> list[tuple[str, int | str]]:
    """The recommended options with some values replaced (grpc takes the first of repeated keys)."""
    return [(k, overrides.get(k, v)) for k, v in RECOMMENDED_OPTIONS]


class LegitCaller:
    """One legitimate client on its own connection, calling back to back in a thread until stopped."""

    def __init__(self, tls_dir: Path, port: int) -> None:
        self.channel = echo_channel(tls_dir, "analyst", port)
        self.call = self.channel.unary_unary(ECHO_PATH, request_serializer=None, response_deserializer=None)
        self.latencies: list[float] = []
        self.errors: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def one(self) -> float:
        """One call; its latency in seconds."""
        t = time.perf_counter()
        assert self.call(b"ping", timeout=10) == b"ping"
        return time.perf_counter() - t

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            try:
                self.call(b"ping", timeout=10)
            except grpc.RpcError as exc:
                self.errors[exc.code().name] += 1
            else:
                self.latencies.append(time.perf_counter() - t)

    def __enter__(self) -> LegitCaller:
        self.one()  # TLS handshake before the abuse starts
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        self.channel.close()


@pytest.mark.slow
def test_rapid_reset_is_refused_per_connection_and_legit_calls_succeed(
        tls_dir: Path, attacker: ClientTls, server: ServerProcess) -> None:
    """HEADERS+RST_STREAM flood from one connection: the server refuses nearly all of its streams
    (REFUSED_STREAM), while a client on another connection keeps getting answers."""
    with LegitCaller(tls_dir, server.port) as legit:
        report = asyncio.run(flood(HOST, server.port, attacker, "rapid_reset", 3.0, ECHO_PATH))
    assert report.error is None
    assert report.sent > 1_000, report.as_dict()
    assert report.server_resets.get("REFUSED_STREAM", 0) > 0.9 * report.sent, report.as_dict()
    assert not legit.errors, dict(legit.errors)
    assert len(legit.latencies) > 20
    # grpcio 1.85 has no rst_stream counter that ends a connection: the flooding connection is never told to go.
    assert report.goaway is None and report.closed_at_s is None, report.as_dict()


@pytest.mark.slow
def test_rapid_reset_without_a_stream_cap_cancels_calls_on_other_connections(
        tls_dir: Path, attacker: ClientTls) -> None:
    """Contrast: with grpcio's defaults (no stream cap) the reset streams fill the server-wide queue of calls
    not yet handed to the application, and the server sheds calls of every connection: legitimate calls on
    another connection fail with CANCELLED."""
    with target_server(tls_dir, "aio", []) as srv, LegitCaller(tls_dir, srv.port) as legit:
        report = asyncio.run(flood(HOST, srv.port, attacker, "rapid_reset", 3.0, ECHO_PATH))
    assert report.sent > 10_000 and not report.server_resets, report.as_dict()
    assert legit.errors.get("CANCELLED", 0) > 0, (dict(legit.errors), len(legit.latencies))


def test_streams_over_the_cap_are_refused(tls_dir: Path, attacker: ClientTls, server: ServerProcess) -> None:
    """Idle streams (HEADERS, never a message) beyond SETTINGS_MAX_CONCURRENT_STREAMS get REFUSED_STREAM;
    the others stay open, and a call on another connection is answered."""
    async def run() -> tuple[int | None, Counter[str], int]:
        client = await H2AbuseClient.connect(HOST, server.port, attacker)
        try:
            await client.open_idle_streams(40, ECHO_PATH, ignore_limit=True)
            await asyncio.sleep(0.5)
            ends = Counter(f"{e.how}:{e.detail}" for e in client.stream_ends.values())
            return client.server_max_concurrent_streams, ends, client.open_stream_count()
        finally:
            await client.close()

    limit, ends, still_open = asyncio.run(run())
    assert limit == 16
    assert ends == Counter({"reset:REFUSED_STREAM": 24})
    assert still_open == 16
    with LegitCaller(tls_dir, server.port) as legit:
        assert legit.one() < 2.0


def test_a_client_bursting_over_the_cap_gets_every_answer(tls_dir: Path, server: ServerProcess) -> None:
    """A legitimate client that starts 40 calls at once on one channel, over the stream cap of 16, gets every
    answer: its channel holds the calls over the cap, and the deallocation headroom keeps overload protection
    from refusing streams the client already counts as finished."""
    channel = echo_channel(tls_dir, "analyst", server.port)
    try:
        call = channel.unary_unary(ECHO_PATH, request_serializer=None, response_deserializer=None)
        futures = [call.future(str(i).encode(), timeout=20) for i in range(40)]
        assert [f.result() for f in futures] == [str(i).encode() for i in range(40)]
    finally:
        channel.close()


def test_idle_streams_do_not_slow_the_aio_server(tls_dir: Path, attacker: ClientTls, server: ServerProcess) -> None:
    """70 idle streams on 7 connections cost the asyncio server no thread: a legitimate client's median latency
    stays within 2x (+5 ms for scheduling noise on a shared machine) of its median without them."""
    with LegitCaller(tls_dir, server.port) as legit:
        before = statistics.median(legit.one() for _ in range(40))
        with IdleStreamHolder(HOST, server.port, attacker, streams_per_connection=10, connections=7,
                              path=ECHO_PATH) as holder:
            during = statistics.median(legit.one() for _ in range(40))
            snap = holder.snapshot()
    assert snap.open_streams == 70 and not snap.ended
    assert during <= 2 * before + 0.005, (before, during)


def test_ping_flood_gets_goaway_enhance_your_calm(attacker: ClientTls, server: ServerProcess) -> None:
    """PINGs faster than min_ping_interval_without_data: the third early one brings GOAWAY ENHANCE_YOUR_CALM
    "too_many_pings" and the server closes the connection."""
    report = asyncio.run(flood(HOST, server.port, attacker, "ping_flood", 3.0))
    assert report.goaway is not None, report.as_dict()
    assert (report.goaway.error, report.goaway.debug) == ("ENHANCE_YOUR_CALM", "too_many_pings")
    assert report.sent_at_goaway is not None and report.sent_at_goaway <= 100
    assert report.closed_at_s is not None and report.closed_at_s < 1.0


def test_settings_flood_is_answered_not_closed(tls_dir: Path, attacker: ClientTls, server: ServerProcess) -> None:
    """grpcio has no limit on SETTINGS frames: it acknowledges every one and keeps the connection."""
    report = asyncio.run(flood(HOST, server.port, attacker, "settings_flood", 1.0))
    assert report.sent > 1000 and report.goaway is None and report.closed_at_s is None, report.as_dict()
    with LegitCaller(tls_dir, server.port) as legit:
        assert legit.one() < 2.0


def test_oversized_metadata_is_refused_per_call(attacker: ClientTls, server: ServerProcess) -> None:
    """Request headers over absolute_max_metadata_size: that call ends with RESOURCE_EXHAUSTED (after a
    tarpit delay); the connection stays."""
    async def run() -> tuple[str, bool]:
        client = await H2AbuseClient.connect(HOST, server.port, attacker)
        try:
            (sid,) = await client.open_idle_streams(1, ECHO_PATH, metadata=[("x-pad", "a" * 20_000)])
            for _ in range(50):
                if sid in client.stream_ends:
                    break
                await asyncio.sleep(0.1)
            end = client.stream_ends[sid]
            return f"{end.how}:{end.detail}", client.closed.is_set()
        finally:
            await client.close()

    ended, closed = asyncio.run(run())
    assert ended.startswith("trailers:grpc-status=8 received metadata size exceeds hard limit"), ended
    assert not closed


@pytest.mark.slow
def test_connection_age_ends_idle_streams_and_idle_timeout_ends_bare_connections(
        tls_dir: Path, attacker: ClientTls) -> None:
    """max_connection_age: GOAWAY(NO_ERROR "max_age") at the age (+-10 %), and after the grace period the idle
    streams are reset and the connection closed. max_connection_idle: a connection without calls gets GOAWAY
    ("connection idle") and is closed."""
    options = with_overrides({"grpc.max_connection_age_ms": 2000, "grpc.max_connection_age_grace_ms": 1000,
                              "grpc.max_connection_idle_ms": 1000})

    async def run(port: int) -> tuple[H2AbuseClient, H2AbuseClient]:
        busy = await H2AbuseClient.connect(HOST, port, attacker)
        bare = await H2AbuseClient.connect(HOST, port, attacker)
        await busy.open_idle_streams(10, ECHO_PATH)
        await asyncio.gather(busy.wait_closed(8.0), bare.wait_closed(8.0))
        await busy.close()
        await bare.close()
        return busy, bare

    with target_server(tls_dir, "aio", options) as srv:
        busy, bare = asyncio.run(run(srv.port))
    assert busy.goaway is not None and (busy.goaway.error, busy.goaway.debug) == ("NO_ERROR", "max_age")
    assert 1.7 <= busy.goaway.at_s <= 2.6, busy.goaway
    assert busy.closed_at_s is not None and 2.7 <= busy.closed_at_s <= 4.0, busy.closed_at_s
    assert {e.how for e in busy.stream_ends.values()} <= {"reset", "connection"} and len(busy.stream_ends) == 10
    assert bare.goaway is not None and bare.goaway.debug == "connection idle", bare.goaway
    assert bare.closed_at_s is not None and bare.closed_at_s < 2.5


@pytest.mark.slow
def test_a_peer_that_never_acks_pings_is_closed_by_ping_timeout_not_keepalive_timeout(
        tls_dir: Path, attacker: ClientTls) -> None:
    """A connection with open calls whose peer never answers the server's keepalive PING is closed with GOAWAY
    ENHANCE_YOUR_CALM "ping_timeout" after keepalive_time + http2.ping_timeout_ms. keepalive_timeout_ms alone
    does not do it in grpcio 1.85 (the server arms that timer only if it is already armed)."""
    async def run(port: int) -> H2AbuseClient:
        client = await H2AbuseClient.connect(HOST, port, attacker, ack_pings=False)
        await client.open_idle_streams(2, ECHO_PATH)
        await client.wait_closed(3.5)
        await client.close()
        return client

    base = [("grpc.keepalive_time_ms", 1000), ("grpc.keepalive_timeout_ms", 500)]
    with target_server(tls_dir, "aio", [*base, ("grpc.http2.ping_timeout_ms", 500)]) as srv:
        closed = asyncio.run(run(srv.port))
    assert closed.goaway is not None and (closed.goaway.error, closed.goaway.debug) == (
        "ENHANCE_YOUR_CALM", "ping_timeout")
    assert closed.closed_at_s is not None and closed.closed_at_s < 2.5
    with target_server(tls_dir, "aio", base) as srv:
        kept = asyncio.run(run(srv.port))
    assert kept.pings_received >= 1 and kept.goaway is None and kept.closed_at_s is not None
    assert kept.closed_at_s >= 3.4  # closed by us at the end of the wait, not by the server


def test_handshake_timeout_closes_stalled_connections(tls_dir: Path, attacker: ClientTls) -> None:
    """server_handshake_timeout_ms covers both the TLS handshake and the HTTP/2 preface: a connection that
    stalls before TLS, or after TLS without the preface, is closed at the timeout."""
    async def run(port: int) -> tuple[float | None, float | None]:
        before, after = await asyncio.gather(stalled_handshake(HOST, port, None, 4.0),
                                             stalled_handshake(HOST, port, attacker, 4.0))
        return before, after

    with target_server(tls_dir, "aio", [("grpc.server_handshake_timeout_ms", 1000)]) as srv:
        before_tls, after_tls = asyncio.run(run(srv.port))
    assert before_tls is not None and 0.9 <= before_tls <= 2.5, before_tls
    assert after_tls is not None and 0.9 <= after_tls <= 2.5, after_tls
