"""`python -m examples.bench.link [--reps N]`: the gateway-sandbox link, Unix socket vs TCP with mutual TLS.

Starts two sandbox processes on the same generated data (3,000 people): one on a Unix socket (the gateway's
default), one on 127.0.0.1 with mutual TLS under a fresh owner's CA (`python -m sandbox --listen`). Then,
interleaved so machine noise hits both alike, it times through `sandbox.client.SandboxClient`: a health
round trip and a noisy COUNT on a pooled connection, and a health round trip on a new connection (the
connect, and for TLS the TLS 1.3 handshake with both certificates and the sandbox's greeting). Prints a
Markdown table of medians and 90th percentiles in milliseconds.
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

from examples.generate_data import generate
from gateway.identity import certs
from gateway.settings import ROOT
from sandbox.client import SandboxClient, SandboxProcess, TlsEndpoint, TlsFiles
from sandbox.protocol.messages import Aggregate, AggregateKind, ExecuteRequest, ExecuteResult, QueryPlan

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
    n = 0

    def execute(c: SandboxClient) -> None:
        nonlocal n
        n += 1
        assert isinstance(c.execute(ExecuteRequest(f"bench/{n}", COUNT, 0.0001)), ExecuteResult)

    ops: dict[str, Callable[[SandboxClient], object]] = {
        "health, pooled connection": lambda c: c.health(),
        "noisy COUNT, pooled connection": execute,
        "health, new connection": lambda c: c.health(fresh=True),
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
