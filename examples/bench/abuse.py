"""Misbehaving clients against the real gateway: does a well-behaved client keep its latency?

`python -m examples.bench.abuse [--seconds 20] [--clients 32]` starts a real gateway and sandbox over a
generated registry (20,000 people), then runs the same legitimate load -- `--clients` processes, each its own
certificate identity and channel, sending RunQuery back to back (COUNT, a fresh release each time) -- four
times: alone; with 70 idle RunQuery streams (headers, never a message) from a certificate of the CA whose
name is in no policy; with 64 VerifyBatch streams from one consumer that each send one claim and then go
silent (re-opened as the gateway ends them); and alone again. It prints each run's p50, p99 and throughput,
the ratio of the loaded p99 to the unloaded one, and the load average.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from examples.bench.systems import without_caps
from gateway.exampledata.generate import generate
from gateway.identity import certs
from gateway.rpc.server import start_gateway
from gateway.settings import ROOT, load_settings

RUN_QUERY = "/privacy_gateway.v1.QueryService/RunQuery"
VERIFY_BATCH = "/privacy_gateway.v1.VerificationService/VerifyBatch"


def _policy(clients: int) -> str:
    members = "".join(f'[organizations.bench.members.legit{i}]\nroles = ["consumer"]\n' for i in range(clients))
    return f'''schema = "privacy_gateway.operator.v2"
[organizations.bench]
name = "Bench"
{members}[organizations.bench.members.abuser]
roles = ["consumer"]
[purposes.bench]
use_class = "public_welfare"
[purposes.kyc]
use_class = "public_welfare"
[[grants]]
organization = "bench"
dataset = "registry"
purpose = "bench"
privacy_definition = "pure_dp"
epsilon = 1000000.0
delta = 0.0
max_epsilon_per_query = 10.0
period = "lifetime"
[verification]
max_checks_per_consumer_per_period = 100000000
[[verification_grants]]
consumer = "abuser"
dataset = "registry"
template = "identity_match"
purpose = "kyc"
max_checks_per_period = 100000000
max_checks_per_subject_per_period = 100000000
'''


def _channel(tls: Path, port: int, who: str) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials((tls / "ca.crt").read_bytes(), (tls / f"{who}.key").read_bytes(),
                                         (tls / f"{who}.crt").read_bytes())
    return grpc.secure_channel(f"127.0.0.1:{port}", creds)


def _legit(args: tuple[Path, int, str, float, int]) -> list[float]:
    """One legitimate client: RunQuery back to back for `seconds`; its latencies."""
    from privacy_gateway.v1 import common_pb2, query_service_pb2, query_service_pb2_grpc

    tls, port, who, seconds, seed = args
    out = []
    with _channel(tls, port, who) as ch:
        stub = query_service_pb2_grpc.QueryServiceStub(ch)
        end, i = time.monotonic() + seconds, 0
        while time.monotonic() < end:
            i += 1
            req = query_service_pb2.RunQueryRequest(
                dataset="registry", purpose="bench", sql="SELECT COUNT(*) FROM residents",
                privacy_loss=common_pb2.PrivacyLoss(epsilon=0.01 * (1 - 1e-9 * (seed * 100000 + i))))
            t = time.perf_counter()
            stub.RunQuery(req, timeout=60)  # a refusal would end the run: every latency is an answer's
            out.append(time.perf_counter() - t)
    return out


class _Never:
    def __init__(self, first: bytes | None, stop: threading.Event) -> None:
        self.first, self.stop = first, stop

    def __iter__(self) -> Iterator[bytes]:
        if self.first is not None:
            yield self.first
        self.stop.wait()


def _idle_streams(tls: Path, port: int, stop: threading.Event, n: int = 70) -> list[grpc.Channel]:
    channels = []
    for k in range(0, n, 14):
        ch = _channel(tls, port, "stranger")
        channels.append(ch)
        call = ch.stream_stream(RUN_QUERY, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        for _ in range(min(14, n - k)):
            call(iter(_Never(None, stop)))
    return channels


def _silent_batches(tls: Path, port: int, stop: threading.Event, n: int = 64) -> list[threading.Thread]:
    from privacy_gateway.v1 import verification_service_pb2 as v_pb

    chunk = v_pb.VerifyBatchRequest(dataset="registry", template="identity_match", purpose="kyc", claims=[
        v_pb.Claim(subject="110101199001011234", parameters={"name": v_pb.ParamValue(string_value="x")})
    ]).SerializeToString()

    def hold() -> None:
        with _channel(tls, port, "abuser") as ch:
            call = ch.stream_stream(VERIFY_BATCH, request_serializer=lambda b: b, response_deserializer=lambda b: b)
            while not stop.is_set():
                try:
                    list(call(iter(_Never(chunk, stop)), timeout=120))
                except grpc.RpcError:
                    time.sleep(0.1)

    threads = [threading.Thread(target=hold, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def _run(pool: Any, tls: Path, port: int, clients: int, seconds: float) -> dict[str, float]:
    load = os.getloadavg()[0]
    t0 = time.monotonic()
    lat = [x for xs in pool.map(_legit, [(tls, port, f"legit{i}", seconds, i) for i in range(clients)]) for x in xs]
    wall = time.monotonic() - t0
    lat.sort()
    return {"n": len(lat), "qps": len(lat) / wall, "p50_ms": 1000 * statistics.median(lat),
            "p99_ms": 1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], "load": load}


def main(argv: list[str] | None = None) -> int:
    """Run the four loads and print the table."""
    parser = argparse.ArgumentParser(prog="python -m examples.bench.abuse", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--people", type=int, default=20_000)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="pgw-abuse-"))
    generate(root / "data", args.people, seed=3)
    tls = root / "tls"
    certs.write_dev_pki(tls, clients=[*(f"legit{i}" for i in range(args.clients)), "abuser", "stranger"])
    (root / "operator.toml").write_text(_policy(args.clients))
    catalog = without_caps(ROOT / "policies" / "catalog.toml", root)  # the load spends more than a month's cap
    settings = load_settings({"listen": "127.0.0.1:0", "policy": root / "operator.toml",
                              "catalog": catalog, "data_dir": root / "data",
                              "state_dir": root / "state", "tls_dir": tls})
    gw = start_gateway(settings)
    rows = []
    try:
        with mp.get_context("spawn").Pool(args.clients) as pool:
            pool.map(_legit, [(tls, gw.port, f"legit{i}", 1.0, i) for i in range(args.clients)])  # warm up
            rows.append(("alone", _run(pool, tls, gw.port, args.clients, args.seconds)))
            stop = threading.Event()
            channels = _idle_streams(tls, gw.port, stop)
            time.sleep(1.0)
            rows.append(("+ 70 idle RunQuery streams", _run(pool, tls, gw.port, args.clients, args.seconds)))
            stop.set()
            for ch in channels:
                ch.close()
            stop = threading.Event()
            threads = _silent_batches(tls, gw.port, stop)
            time.sleep(1.0)
            rows.append(("+ 64 silent VerifyBatch streams", _run(pool, tls, gw.port, args.clients, args.seconds)))
            stop.set()
            for t in threads:
                t.join(30)
            rows.append(("alone again", _run(pool, tls, gw.port, args.clients, args.seconds)))
    finally:
        gw.stop()
    base = rows[0][1]["p99_ms"]
    print(f"{args.clients} legitimate clients (each its own process and identity), RunQuery COUNT over "
          f"{args.people:,} people, {args.seconds:.0f} s per run, on {os.cpu_count()} cores")
    print("| load | requests | q/s | p50 ms | p99 ms | p99 / alone | load average (1 min) at start |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, r in rows:
        print(f"| {name} | {r['n']:,} | {r['qps']:.1f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
              f"{r['p99_ms'] / base:.2f}x | {r['load']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
