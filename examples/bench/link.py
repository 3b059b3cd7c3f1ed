"""`python -m examples.bench.link [--reps N]`: the gateway-sandbox link, Unix socket vs TCP with mutual TLS.

Starts two sandbox processes on the same generated data (3,000 people): one on a Unix socket (the gateway's
default), one on 127.0.0.1 with mutual TLS under a fresh owner's CA (`python -m sandbox --listen`). Then,
interleaved so machine noise hits both alike, it times through `sandbox.client.SandboxClient`: a health
round trip and a noisy COUNT on a pooled connection, and a health round trip on a new connection (the
connect, and for TLS the TLS 1.3 handshake with both certificates and the sandbox's greeting). Then a whole
request: two gateways (the example policy, each with its own state), one starting its own sandbox on a Unix
socket, one reaching the TLS sandbox at `sandbox_address`, each answering a distinct `RunQuery` (a COUNT at
epsilon 0.01: gRPC over mTLS, the charge, the sandbox, the receipt, the audit entry). Prints a Markdown table
of medians and 90th percentiles in milliseconds.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import query_service_pb2 as q_pb
from privacy_gateway.v1 import query_service_pb2_grpc as q_grpc

from gateway.exampledata.generate import generate
from gateway.identity import certs
from gateway.rpc.server import Gateway, start_gateway
from gateway.settings import ROOT, load_settings
from sandbox.client import SandboxClient, SandboxProcess, TlsEndpoint, TlsFiles
from sandbox.protocol.messages import Aggregate, AggregateKind, ExecuteRequest, ExecuteResult, QueryPlan

CONSUMER = "acme-bank-analyst"
COUNT = QueryPlan("registry", "residents", (Aggregate(AggregateKind.COUNT),), ())


def _tls_sandbox(root: Path, data: Path) -> tuple[subprocess.Popen[str], int]:
    tls = root / "owner-tls"
    certs.write_owner_pki(tls, ["gw1"], ["127.0.0.1"])
    proc = subprocess.Popen(
        [sys.executable, "-m", "sandbox", "--catalog", str(ROOT / "policies" / "catalog.toml"), "--data-dir",
         str(data), "--listen", "127.0.0.1:0", "--tls-dir", str(tls), "--state-dir", str(root / "tls-state")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("sandbox ready listen="):
            return proc, int(line.split()[2].rpartition(":")[2].split()[0])
    raise RuntimeError("the TLS sandbox did not start")


def _gateway(root: Path, name: str, data: Path, **remote: object) -> Gateway:
    settings = load_settings({"listen": "127.0.0.1:0", "data_dir": data, "state_dir": root / name,
                              "tls_dir": root / "certs", "sandbox_memory_limit": "1GiB", **remote})
    return start_gateway(settings)


def _query(stub: Any, n: int) -> None:
    stub.RunQuery(q_pb.RunQueryRequest(
        dataset="registry", sql=f"SELECT COUNT(*) FROM residents WHERE birth_year > {-1 - n}", purpose="credit-risk",
        privacy_loss=common_pb.PrivacyLoss(epsilon=0.01)), timeout=30)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m examples.bench.link")
    p.add_argument("--reps", type=int, default=300)
    args = p.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pgw-link-"))
    data = root / "data"
    generate(data, 3000, seed=11)
    unix = SandboxProcess.start(ROOT / "policies" / "catalog.toml", root / "sandbox.sock", data)
    proc, port = _tls_sandbox(root, data)
    tls = root / "owner-tls"
    clients = {
        "Unix socket": unix.client(),
        "TCP + mutual TLS (loopback)": SandboxClient(
            TlsEndpoint("127.0.0.1", port, TlsFiles(tls / "ca.crt", tls / "gw1.crt", tls / "gw1.key"))),
    }
    certs.write_dev_pki(root / "certs", clients=[CONSUMER])
    c = root / "certs"
    creds = grpc.ssl_channel_credentials((c / "ca.crt").read_bytes(), (c / f"{CONSUMER}.key").read_bytes(),
                                         (c / f"{CONSUMER}.crt").read_bytes())
    gateways = {
        "Unix socket": _gateway(root, "gw-unix", data),
        "TCP + mutual TLS (loopback)": _gateway(
            root, "gw-tls", data, sandbox_address=f"127.0.0.1:{port}", sandbox_tls_ca=tls / "ca.crt",
            sandbox_tls_cert=tls / "gw1.crt", sandbox_tls_key=tls / "gw1.key"),
    }
    stubs: dict[str, Any] = {k: q_grpc.QueryServiceStub(grpc.secure_channel(f"127.0.0.1:{gw.port}", creds))  # type: ignore[no-untyped-call]
                             for k, gw in gateways.items()}
    n = 0

    def run_query(c: SandboxClient) -> None:
        nonlocal n
        n += 1
        _query(stubs[next(k for k, v in clients.items() if v is c)], n)

    def execute(c: SandboxClient) -> None:
        nonlocal n
        n += 1
        assert isinstance(c.execute(ExecuteRequest(f"bench/{n}", COUNT, 0.0001)), ExecuteResult)

    ops: dict[str, Callable[[SandboxClient], object]] = {
        "health, pooled connection": lambda c: c.health(),
        "noisy COUNT, pooled connection": execute,
        "health, new connection": lambda c: c.health(fresh=True),
        "RunQuery through a gateway (gRPC, charge, sandbox, receipt, audit)": run_query,
    }
    times: dict[tuple[str, str], list[float]] = {(o, k): [] for o in ops for k in clients}
    try:
        for rep in range(args.reps + 20):
            names = list(clients) if rep % 2 else list(reversed(clients))
            for op, fn in ops.items():
                for name in names:
                    t = time.perf_counter()
                    fn(clients[name])
                    if rep >= 20:  # warm-up
                        times[(op, name)].append((time.perf_counter() - t) * 1000)
    finally:
        for gw in gateways.values():
            gw.stop()
        unix.stop()
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)
    heads = " | ".join(f"{k} median / p90 ms" for k in clients)
    print(f"| operation ({args.reps} each, interleaved) | {heads} |")
    print("| --- | " + " | ".join("---" for _ in clients) + " |")
    for op in ops:
        cells = []
        for name in clients:
            xs = sorted(times[(op, name)])
            cells.append(f"{statistics.median(xs):.3f} / {xs[int(0.9 * (len(xs) - 1))]:.3f}")
        print(f"| {op} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
