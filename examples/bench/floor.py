"""Benchmark-only: the least a request must do on this project's stack, to put the gateway's cost in context.

Issue #3 asks for the gateway's median within 1.5x of plain DuckDB at 10M people. What part of the gap is the
stack itself (Python, grpcio, a separate sandbox process, OpenDP, a durable charge) and what part is the
gateway's own work? `FloorSystem` answers COUNT, SUM and AVG of `residents` with only what principles 1, 4
and 5 make unavoidable, and nothing else:

* a unary gRPC call over the same kind of mTLS channel (raw bytes, no protobuf, no authentication check);
* a hop over a Unix socket to a separate sandbox process (`serve_sandbox`), which holds the income column
  as clamped INTEGER (as the real sandbox stores it), checks one OpenDP privacy map per released value, runs
  the aggregate in DuckDB with the same thread count, and adds OpenDP's discrete Laplace noise;
* one durable SQLite commit (WAL, synchronous=FULL) holding the charge and the release together.

It has no policy, grants, nested budgets, SQL analysis, audit chain, receipt signature, intervals, cache or
error handling. Nothing in `gateway/` or `sandbox/` imports it. The harness runs it interleaved with the
real gateway and plain DuckDB; its ratio to DuckDB is the best any gateway on this stack could reach.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import uuid
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from examples.bench.systems import Outcome
from gateway.identity import certs
from gateway.settings import ROOT
from sandbox.server import recv_exact

# The floor answers these WORKLOAD ids: (sandbox SQL over the clamped INTEGER column, L1 sensitivity per value).
_QUERIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "count": ("SELECT count(*) FROM residents", ("count",)),
    "sum": ("SELECT sum(income) FROM residents", ("sum",)),
    "avg": ("SELECT sum(income), count(income) FROM residents", ("sum", "count")),
}
_METHOD = "/privacy_gateway.bench.Floor/Run"


def _send(sock: socket.socket, body: bytes) -> None:
    sock.sendall(struct.pack(">I", len(body)) + body)


def _recv(sock: socket.socket) -> bytes:
    """One length-prefixed frame, read with the sandbox server's own `recv_exact`."""
    header = recv_exact(sock, 4)
    body = recv_exact(sock, struct.unpack(">I", header)[0]) if header is not None else None
    if body is None:
        raise ConnectionError("peer closed")
    return body


def serve_sandbox(parquet: str, sock_path: str, threads: int, upper: int) -> None:
    """The minimal sandbox process: load, then answer frames {"q", "eps"} with {"v": [noisy, ...]}."""
    import duckdb
    import opendp.prelude as dp

    dp.enable_features("contrib")
    con = duckdb.connect(config={"threads": threads})
    path = parquet.replace("'", "''")
    con.execute(f"CREATE TABLE residents AS SELECT CAST(least(greatest(income, 0), {int(upper)}) AS INTEGER)"
                f" AS income FROM read_parquet('{path}')")
    space = dp.vector_domain(dp.atom_domain(T="i64")), dp.l1_distance(T="i64")
    sensitivity = {"count": 1, "sum": int(upper)}
    server = socket.socket(socket.AF_UNIX)
    server.bind(sock_path)
    server.listen(1)
    print("ready", flush=True)
    conn, _ = server.accept()
    while True:
        try:
            req = json.loads(_recv(conn))
        except ConnectionError:
            return
        sql, parts = _QUERIES[req["q"]]
        share = float(req["eps"]) / len(parts)
        measurements = []
        for part in parts:  # the sandbox's own check of the price: one OpenDP map per released value
            d_in = sensitivity[part]
            m = dp.m.make_laplace(*space, scale=d_in / share)
            if not m.map(d_in) <= share * (1 + 1e-9):  # type: ignore[no-untyped-call]
                raise RuntimeError("priced above the share")
            measurements.append(m)
        row = con.execute(sql).fetchone()
        assert row is not None
        noisy = [m([int(v)])[0] for m, v in zip(measurements, row, strict=True)]
        _send(conn, json.dumps({"v": noisy}).encode())


class FloorSystem:
    """The stack-floor pipeline (module docstring), with `run` like the harness's other systems."""

    def __init__(self, data_dir: Path, root: Path, threads: int, income_upper: int) -> None:
        root.mkdir(parents=True, exist_ok=True)
        tls = root / "tls"
        certs.write_dev_pki(tls, clients=["floor"])
        sock_path = str(root / "floor.sock")
        t0 = time.perf_counter()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "examples.bench.floor", str(data_dir / "residents.parquet"), sock_path,
             str(threads), str(income_upper)],
            stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )
        assert self._proc.stdout is not None
        if self._proc.stdout.readline().strip() != "ready":
            self._proc.kill()
            raise RuntimeError("the floor sandbox did not start")
        self.load_seconds = time.perf_counter() - t0
        self._sandbox = socket.socket(socket.AF_UNIX)
        self._sandbox.connect(sock_path)
        self._db = sqlite3.connect(root / "floor-ledger.sqlite3", isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS charges (id TEXT PRIMARY KEY, epsilon REAL, release BLOB)")
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.unary_unary_rpc_method_handler(self._handle)
        self._server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler("privacy_gateway.bench.Floor", {"Run": handler})])
        creds = grpc.ssl_server_credentials(
            [((tls / "server.key").read_bytes(), (tls / "server.crt").read_bytes())],
            root_certificates=(tls / "ca.crt").read_bytes(), require_client_auth=True,
        )
        port = self._server.add_secure_port("127.0.0.1:0", creds)
        self._server.start()
        self._channel = grpc.secure_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(
            (tls / "ca.crt").read_bytes(), (tls / "floor.key").read_bytes(), (tls / "floor.crt").read_bytes()))
        self._call = self._channel.unary_unary(_METHOD, None, None)
        self._calls = 0

    def _handle(self, body: bytes, context: grpc.ServicerContext) -> bytes:
        _send(self._sandbox, body)
        release = _recv(self._sandbox)
        self._db.execute("BEGIN IMMEDIATE")  # the one durable commit: the charge and its release together
        self._db.execute("INSERT INTO charges VALUES (?, ?, ?)",
                         (uuid.uuid4().hex, json.loads(body)["eps"], release))
        self._db.execute("COMMIT")
        return release

    def run(self, q: Any) -> Any:
        """COUNT, SUM or AVG of residents end to end; anything else is "unsupported"."""
        if q.id not in _QUERIES:
            return Outcome(unsupported="not part of the stack floor (COUNT, SUM and AVG only)")
        self._calls += 1
        body = json.dumps({"q": q.id, "eps": 1.0 * (1 + self._calls * 1e-12)}).encode()
        t0 = time.perf_counter()
        out = json.loads(self._call(body, timeout=60))
        elapsed = time.perf_counter() - t0
        return Outcome(seconds=elapsed, rows=[((), [float(v) for v in out["v"]])])

    def close(self) -> None:
        """Stop the server and the sandbox process."""
        self._channel.close()
        self._server.stop(None)
        self._sandbox.close()
        self._db.close()
        self._proc.kill()
        self._proc.wait()


if __name__ == "__main__":
    serve_sandbox(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
