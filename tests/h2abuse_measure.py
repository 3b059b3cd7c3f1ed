"""Measurements behind tests/h2abuse.md: abuse from :mod:`tests.h2abuse` against :mod:`tests.h2abuse_target`.

Each scenario starts a fresh target server (``aio``, ``aio-thread`` or ``sync``) with the given channel
arguments, measures 32 legitimate clients alone (the baseline), then again while the abuse runs, and prints one
JSON line: the abuse report, both latency summaries, the server's CPU time and memory, and the load average.
The attacker runs in this process, the server and the legitimate clients each in their own.

    python -m tests.h2abuse_measure rapid --kind aio --options recommended
    python -m tests.h2abuse_measure idle --kind sync --streams 70 --connections 1
    python -m tests.h2abuse_measure floods --options default
    python -m tests.h2abuse_measure lifetime --options '[["grpc.max_connection_age_ms", 5000]]'
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from gateway.identity import certs
from tests.h2abuse import ClientTls, H2AbuseClient
from tests.h2abuse_scenarios import IdleStreamHolder, flood, stalled_handshake
from tests.h2abuse_target import ECHO_PATH, RECOMMENDED_OPTIONS, ServerOptions, ServerProcess, target_server


def _options(text: str) -> ServerOptions:
    if text == "default":
        return []
    if text == "recommended":
        return RECOMMENDED_OPTIONS
    return [(str(k), v) for k, v in json.loads(text)]


def _load_proc(tls_dir: Path, port: int, clients: int, seconds: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.h2abuse_target", "load", "--tls-dir", str(tls_dir), "--port", str(port),
         "--clients", str(clients), "--seconds", str(seconds)],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[1])


def _finish(proc: subprocess.Popen[str]) -> dict[str, object]:
    out, _ = proc.communicate(timeout=300)
    return dict(json.loads(out.strip().splitlines()[-1]))


def _server_stats(srv: ServerProcess, cpu0: float) -> dict[str, object]:
    return {"server_cpu_s": round(srv.cpu_seconds() - cpu0, 2), "server_rss_mib": round(srv.rss_kib() / 1024, 1),
            "loadavg": [round(x, 2) for x in os.getloadavg()]}


def _baseline(tls_dir: Path, srv: ServerProcess, clients: int, seconds: float) -> dict[str, object]:
    return _finish(_load_proc(tls_dir, srv.port, clients, seconds))


async def _floods(port: int, tls: ClientTls, attackers: int, seconds: float,
                  rate: float | None) -> dict[str, object]:
    each = None if rate is None else rate / attackers
    reports = await asyncio.gather(*(flood("127.0.0.1", port, tls, "rapid_reset", seconds, ECHO_PATH, rate=each)
                                     for _ in range(attackers)))
    if attackers == 1:
        return reports[0].as_dict()
    refused = sum(r.server_resets.get("REFUSED_STREAM", 0) for r in reports)
    return {"kind": "rapid_reset", "connections": attackers, "sent": sum(r.sent for r in reports),
            "rate": round(sum(r.rate for r in reports), 1), "server_resets": {"REFUSED_STREAM": refused},
            "goaways": sum(r.goaway is not None for r in reports), "closed": sum(r.closed_at_s is not None
                                                                              for r in reports),
            "errors": [r.error for r in reports if r.error]}


def rapid(tls_dir: Path, kind: str, options: ServerOptions, clients: int, seconds: float,
          attackers: int = 1, rate: float | None = None) -> dict[str, object]:
    """``attackers`` connections flood HEADERS+RST_STREAM while ``clients`` legitimate clients call on their
    own connections."""
    with target_server(tls_dir, kind, options) as srv:
        cpu_base = srv.cpu_seconds()
        base = _baseline(tls_dir, srv, clients, seconds)
        base["server_cpu_s"] = round(srv.cpu_seconds() - cpu_base, 2)
        cpu0 = srv.cpu_seconds()
        load = _load_proc(tls_dir, srv.port, clients, seconds)
        time.sleep(1.0)
        report = asyncio.run(_floods(srv.port, ClientTls.from_pki(tls_dir, "attacker"), attackers, seconds - 1.0,
                                     rate))
        under = _finish(load)
        return {"scenario": "rapid", "kind": kind, "flood": report, "baseline": base, "under": under,
                **_server_stats(srv, cpu0)}


def idle(tls_dir: Path, kind: str, options: ServerOptions, clients: int, seconds: float, streams: int,
         connections: int) -> dict[str, object]:
    """``connections`` x ``streams`` idle streams held while ``clients`` legitimate clients call."""
    with target_server(tls_dir, kind, options) as srv:
        base = _baseline(tls_dir, srv, clients, seconds)
        cpu0 = srv.cpu_seconds()
        with IdleStreamHolder("127.0.0.1", srv.port, ClientTls.from_pki(tls_dir, "attacker"),
                              streams_per_connection=streams, connections=connections, path=ECHO_PATH) as holder:
            time.sleep(0.5)
            under = _finish(_load_proc(tls_dir, srv.port, clients, seconds))
            snap = holder.snapshot()
        return {"scenario": "idle", "kind": kind, "streams": streams, "connections": connections,
                "baseline": base, "under": under, "idle_after": {"open": snap.open_streams, "ended": snap.ended,
                                                                 "goaways": [g.error for g in snap.goaways]},
                **_server_stats(srv, cpu0)}


def floods(tls_dir: Path, kind: str, options: ServerOptions, seconds: float) -> dict[str, object]:
    """Ping flood and settings flood, each on a fresh connection, with and without open streams."""
    tls = ClientTls.from_pki(tls_dir, "attacker")
    out: dict[str, object] = {"scenario": "floods", "kind": kind}
    with target_server(tls_dir, kind, options) as srv:
        for name in ("ping_flood", "settings_flood"):
            out[name] = asyncio.run(flood("127.0.0.1", srv.port, tls, name, seconds)).as_dict()

        async def ping_with_stream() -> dict[str, object]:
            client = await H2AbuseClient.connect("127.0.0.1", srv.port, tls)
            try:
                await client.open_idle_streams(1, ECHO_PATH)
                return (await client.ping_flood(seconds)).as_dict()
            finally:
                await client.close()

        out["ping_flood_with_open_stream"] = asyncio.run(ping_with_stream())
        out.update(_server_stats(srv, 0.0))
    return out


def lifetime(tls_dir: Path, kind: str, options: ServerOptions, seconds: float, streams: int,
             ack_pings: bool) -> dict[str, object]:
    """Hold ``streams`` idle streams (and one bare connection) and record when and how the server ends them."""
    tls = ClientTls.from_pki(tls_dir, "attacker")

    async def run() -> dict[str, object]:
        busy = await H2AbuseClient.connect("127.0.0.1", srv.port, tls, ack_pings=ack_pings)
        bare = await H2AbuseClient.connect("127.0.0.1", srv.port, tls, ack_pings=ack_pings)
        over = await H2AbuseClient.connect("127.0.0.1", srv.port, tls, ack_pings=ack_pings)
        await busy.open_idle_streams(streams, ECHO_PATH)
        limit = over.server_max_concurrent_streams
        if limit is not None and limit < 2**31 - 1:
            await over.open_idle_streams(limit + 5, ECHO_PATH, ignore_limit=True)
        await asyncio.gather(busy.wait_closed(seconds), bare.wait_closed(seconds), over.wait_closed(seconds))
        result: dict[str, object] = {}
        for name, c in (("streams", busy), ("bare", bare), ("over_limit", over)):
            ends: dict[str, list[float]] = {}
            for e in c.stream_ends.values():
                ends.setdefault(f"{e.how}:{e.detail}", []).append(e.at_s)
            result[name] = {
                "server_max_concurrent_streams": c.server_max_concurrent_streams,
                "goaway": None if c.goaway is None else [c.goaway.error, c.goaway.debug, round(c.goaway.at_s, 2)],
                "closed_at_s": None if c.closed_at_s is None else round(c.closed_at_s, 2),
                "pings_received": c.pings_received,
                "read_error": c.read_error,
                "still_open": c.open_stream_count(),
                "ended": {k: [len(v), round(min(v), 2), round(max(v), 2)] for k, v in ends.items()},
            }
            await c.close()
        return result

    with target_server(tls_dir, kind, options) as srv:
        return {"scenario": "lifetime", "kind": kind, "ack_pings": ack_pings, **asyncio.run(run())}


def handshake(tls_dir: Path, kind: str, options: ServerOptions, seconds: float) -> dict[str, object]:
    """How long the server keeps a connection that stalls before TLS, and one that stalls after TLS; and what it
    does with a request whose headers exceed the metadata limits."""
    tls = ClientTls.from_pki(tls_dir, "attacker")

    async def run(port: int) -> dict[str, object]:
        no_tls, no_preface = await asyncio.gather(stalled_handshake("127.0.0.1", port, None, seconds),
                                                  stalled_handshake("127.0.0.1", port, tls, seconds))
        client = await H2AbuseClient.connect("127.0.0.1", port, tls)
        sizes = (4_000, 12_000, 20_000, 40_000)
        ids = [(await client.open_idle_streams(1, ECHO_PATH, metadata=[("x-pad", "a" * n)]))[0] for n in sizes]
        await asyncio.sleep(3.0)
        ends = {n: client.stream_ends.get(sid) for n, sid in zip(sizes, ids, strict=True)}
        closed = client.closed.is_set()
        await client.close()
        return {"stalled_before_tls_closed_after_s": no_tls, "stalled_after_tls_closed_after_s": no_preface,
                "metadata": {str(n): None if e is None else [e.how, e.detail, round(e.at_s, 2)]
                             for n, e in ends.items()},
                "connection_closed_by_big_metadata": closed}

    with target_server(tls_dir, kind, options) as srv:
        return {"scenario": "handshake", "kind": kind, **asyncio.run(run(srv.port))}


def main(argv: Sequence[str] | None = None) -> int:
    """Run one scenario and print its JSON line."""
    parser = argparse.ArgumentParser(prog="python -m tests.h2abuse_measure")
    parser.add_argument("scenario", choices=["rapid", "idle", "floods", "lifetime", "handshake"])
    parser.add_argument("--kind", choices=["aio", "aio-thread", "sync"], default="aio")
    parser.add_argument("--options", default="default", help="default, recommended, or a JSON list of pairs")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--streams", type=int, default=70)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--no-ping-ack", action="store_true")
    parser.add_argument("--attackers", type=int, default=1, help="rapid: flooding connections")
    parser.add_argument("--rate", type=float, default=None, help="rapid: total streams per second (default: max)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="h2m-") as tmp:
        tls_dir = Path(tmp)
        certs.write_dev_pki(tls_dir, clients=["analyst", "attacker"])
        opts = _options(args.options)
        if args.scenario == "rapid":
            out = rapid(tls_dir, args.kind, opts, args.clients, args.seconds, args.attackers, args.rate)
        elif args.scenario == "idle":
            out = idle(tls_dir, args.kind, opts, args.clients, args.seconds, args.streams, args.connections)
        elif args.scenario == "floods":
            out = floods(tls_dir, args.kind, opts, args.seconds)
        elif args.scenario == "handshake":
            out = handshake(tls_dir, args.kind, opts, args.seconds)
        else:
            out = lifetime(tls_dir, args.kind, opts, args.seconds, args.streams, not args.no_ping_ack)
    print(json.dumps({"options": args.options, **out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
