"""The systems the benchmark times side by side: the real gateway (gRPC stubs over mTLS to a gateway and sandbox
process started here, with a stand-in gateway on the same sandbox: `standins.py`), plain DuckDB (the floor) and
SmartNoise SQL (a peer, in its own venv); the stack floor is `floor.py`. Each answers `run(query)` with an
`Outcome`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import grpc
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import query_service_pb2 as q_pb
from privacy_gateway.v1 import query_service_pb2_grpc as q_grpc

from examples.bench.common import BENCH_DIR, CATALOG, log
from examples.bench.queries import DATASET, DELTA, EPSILON, Query
from examples.bench.standins import bare_gateway
from gateway.cli.client import describe_error
from gateway.identity import certs
from gateway.rpc.server import Gateway, start_gateway
from gateway.settings import load_settings
from sandbox.client import SandboxProcess, SandboxStartError

__all__ = [
    "CLIENTS",
    "DuckDBSystem",
    "GatewaySystem",
    "Outcome",
    "SmartNoiseSystem",
    "income_upper",
    "start_gateway_system",
    "without_caps",
]

SN_VENV = BENCH_DIR / "venv-smartnoise"
SN_WORKER = Path(__file__).resolve().parent / "smartnoise_worker.py"
SN_REQUIREMENT = "smartnoise-sql==1.0.10"

BENCH_POLICY = """
schema = "privacy_gateway.operator.v1"

[consumers.bench]
organization = "Benchmark (latency)"

[consumers.accuracy]
organization = "Benchmark (accuracy)"

[[grants]]
consumer = "bench"
dataset = "registry"
purpose = "benchmark"
privacy_definition = "approx_dp"
epsilon = 1000000000.0
delta = 0.5
max_epsilon_per_query = 1.0

[[grants]]
consumer = "accuracy"
dataset = "registry"
purpose = "benchmark"
privacy_definition = "approx_dp"
epsilon = 1000000000.0
delta = 0.5
max_epsilon_per_query = 1.0
"""
CLIENTS = ("bench", "accuracy")


@dataclass
class Outcome:
    """One call: elapsed seconds, or the reason it is unsupported; values for accuracy."""

    seconds: float | None = None
    unsupported: str | None = None
    rows: list[tuple[tuple[Any, ...], list[float]]] = field(default_factory=list)  # (keys, values)


def cell_value(cell: q_pb.Cell) -> Any:
    """The Python value of a response cell."""
    kind = cell.WhichOneof("value")
    return None if kind in (None, "null_value") else getattr(cell, kind)


class GatewaySystem:
    """A real sandbox process and gateway, with mTLS stubs for the benchmark consumers."""

    def __init__(self, data_dir: Path, root: Path, threads: int, catalog: Path = CATALOG) -> None:
        self._calls = 0
        catalog = without_caps(catalog, root)
        self.catalog = catalog
        root.mkdir(parents=True, exist_ok=True)
        tls = root / "tls"
        certs.write_dev_pki(tls, clients=list(CLIENTS))
        policy = root / "operator.toml"
        policy.write_text(BENCH_POLICY)
        self.settings = load_settings({
            "listen": "127.0.0.1:0", "policy": policy, "catalog": catalog, "data_dir": data_dir,
            "state_dir": root / "state", "tls_dir": tls, "query_timeout_ms": 120_000,
            "sandbox_memory_limit": "12GiB", "sandbox_threads": threads, "start_sandbox": False,
        })
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        # The real sandbox process, started here (not by start_gateway) only to lift its 8 GiB address-space
        # cap and 2 GiB DuckDB memory limit, which 10M people (about 50M social-insurance rows) exceed.
        t0 = time.perf_counter()
        self.sandbox = SandboxProcess.start(
            catalog, self.settings.sandbox_socket, data_dir,
            ["--query-timeout-ms", "120000", "--memory-limit", "12GiB", "--threads", str(threads),
             "--address-space-bytes", "0"],
            ready_timeout_s=900.0,
        )
        self.sandbox_load_seconds = time.perf_counter() - t0
        self.gw: Gateway = start_gateway(self.settings)
        # A second gateway on the same sandbox that skips charging and auditing (issue #4's comparison).
        self.bare: Gateway = bare_gateway(self.settings, root / "state-bare")
        self.channels: dict[str, grpc.Channel] = {}
        self.stubs: dict[str, q_grpc.QueryServiceStub] = {}
        self.bare_stub: q_grpc.QueryServiceStub | None = None
        for name in CLIENTS:
            creds = grpc.ssl_channel_credentials(
                root_certificates=(tls / "ca.crt").read_bytes(),
                private_key=(tls / f"{name}.key").read_bytes(),
                certificate_chain=(tls / f"{name}.crt").read_bytes(),
            )
            ch = grpc.secure_channel(f"127.0.0.1:{self.gw.port}", creds)
            self.channels[name] = ch
            self.stubs[name] = q_grpc.QueryServiceStub(ch)
            if name == "bench":
                bare_ch = grpc.secure_channel(f"127.0.0.1:{self.bare.port}", creds)
                self.channels["bench-bare"] = bare_ch
                self.bare_stub = q_grpc.QueryServiceStub(bare_ch)

    def run(self, q: Query, epsilon: float = EPSILON, consumer: str = "bench", *, bare: bool = False,
            weights: dict[str, float] | None = None) -> Outcome:
        """RunQuery end to end; INVALID_ARGUMENT/UNIMPLEMENTED mean "unsupported".

        `bare` sends it to the stand-in gateway that neither charges nor audits (`standins.py`).

        Every call is a distinct release: epsilon is nudged by a relative 1e-12 per call, so the charge-once
        release cache (which would answer a repeated query in about a millisecond) never hits.
        """
        self._calls += 1
        epsilon = epsilon * (1 - 1e-12 * self._calls)
        req = q_pb.RunQueryRequest(
            dataset=DATASET, sql=q.sql, purpose="benchmark", request_id=uuid.uuid4().hex,
            privacy_loss=common_pb.PrivacyLoss(epsilon=epsilon, delta=q.delta), weights=weights or {},
        )
        stub = self.bare_stub if bare else self.stubs[consumer]
        assert stub is not None
        t0 = time.perf_counter()
        try:
            resp = stub.RunQuery(req, timeout=300)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNIMPLEMENTED,  # type: ignore[attr-defined]
                              grpc.StatusCode.FAILED_PRECONDITION):
                return Outcome(unsupported=describe_error(exc))
            raise
        elapsed = time.perf_counter() - t0
        rows = []
        for row in resp.rows:
            vals = [cell_value(c) for c in row.cells]
            rows.append((tuple(vals[: q.keys]), [float(v) for v in vals[q.keys:]]))
        return Outcome(seconds=elapsed, rows=rows)

    def explain(self, q: Query) -> float:
        """ExplainQuery (prices, charges nothing) end to end; seconds."""
        req = q_pb.ExplainQueryRequest(dataset=DATASET, sql=q.sql, purpose="benchmark",
                                       privacy_loss=common_pb.PrivacyLoss(epsilon=EPSILON))
        t0 = time.perf_counter()
        self.stubs["bench"].ExplainQuery(req, timeout=60)
        return time.perf_counter() - t0

    def close(self) -> None:
        """Stop the gateway and the sandbox."""
        for ch in self.channels.values():
            ch.close()
        self.bare.stop()
        self.gw.stop()
        self.sandbox.stop()


def without_caps(catalog: Path, root: Path) -> Path:
    """A copy of the catalog without the data owner's per-period caps (a benchmark spends far more than a month's
    cap). Its data_dir is irrelevant: the harness passes the data directory explicitly."""
    root.mkdir(parents=True, exist_ok=True)
    text = re.sub(r"(?ms)^\[datasets\.[^\]]+\.caps\]\n.*?(?=^\[|\Z)", "", catalog.read_text())
    out = root / f"bench-{catalog.name}"
    out.write_text(text)
    return out


def residents_only_catalog(root: Path) -> Path:
    """A copy of the data owner's catalog with only `registry.residents` (fallback when the sandbox cannot load
    every table of a size in memory); every residents setting is unchanged."""
    keep: list[str] = []
    drop = False
    for line in CATALOG.read_text().splitlines():
        if line.startswith("["):
            drop = line.startswith(("[datasets.enterprises", "[datasets.registry.tables.social_insurance",
                                    "[datasets.registry.verifications"))
        if not drop:
            keep.append(line)
    path = root / "catalog-residents-only.toml"
    path.write_text("\n".join(keep) + "\n")
    return path


def income_upper(catalog: Path = CATALOG) -> int:
    """The catalog's upper bound on `residents.income` (the stack floor clamps to it, as the sandbox does)."""
    import tomllib

    cols = tomllib.loads(catalog.read_text())["datasets"][DATASET]["tables"]["residents"]["columns"]
    return int(cols["income"]["upper"])


def start_gateway_system(data_dir: Path, root: Path, threads: int) -> tuple[GatewaySystem, str | None]:
    """The gateway over the real catalog, or over residents only if the sandbox cannot load everything."""
    try:
        return GatewaySystem(data_dir, root / "full", threads), None
    except SandboxStartError as exc:
        tail = [ln for ln in str(exc).splitlines() if "Error" in ln]
        reason = (tail[-1] if tail else str(exc).splitlines()[0]).strip()[:300]
        log(f"  the sandbox could not load the full catalog: {reason}")
        log("  retrying with residents only (the queries on social_insurance become 'not loaded')")
        return GatewaySystem(data_dir, root / "residents", threads, residents_only_catalog(root)), reason


class DuckDBSystem:
    """Plain DuckDB, in process, over in-memory tables loaded from the same Parquet files."""

    def __init__(self, data_dir: Path, threads: int) -> None:
        t0 = time.perf_counter()
        self.con = duckdb.connect(config={"threads": threads})
        for table in ("residents", "social_insurance", "regions"):
            path = str(data_dir / f"{table}.parquet").replace("'", "''")
            self.con.execute(f"CREATE TABLE {table} AS SELECT * FROM read_parquet('{path}')")
        self.load_seconds = time.perf_counter() - t0
        self.data_dir = data_dir

    def run(self, q: Query) -> Outcome:
        """The query as written; exact answers."""
        t0 = time.perf_counter()
        try:
            result = self.con.execute(q.sql).fetchall()
        except duckdb.Error as exc:
            return Outcome(unsupported=f"{type(exc).__name__}: {exc}".splitlines()[0])
        elapsed = time.perf_counter() - t0
        rows = [(tuple(r[: q.keys]), [float(v) for v in r[q.keys:]]) for r in result]
        return Outcome(seconds=elapsed, rows=rows)

    def exact(self, sql: str, keys: int) -> dict[tuple[Any, ...], list[float]]:
        """Exact answers keyed by group."""
        return {tuple(r[:keys]): [float(v) for v in r[keys:]] for r in self.con.execute(sql).fetchall()}

    def close(self) -> None:
        """Free the tables."""
        self.con.close()


def ensure_smartnoise_venv() -> Path:
    """Create `.bench/venv-smartnoise` with smartnoise-sql (pins opendp<0.15, pandas<3) on first use."""
    py = SN_VENV / "bin" / "python"
    stamp = SN_VENV / ".installed"
    if not stamp.exists():
        log(f"creating {SN_VENV} and installing {SN_REQUIREMENT} (first run only) ...")
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(SN_VENV)], check=True)
        subprocess.run(
            [str(py), "-m", "pip", "install", "--quiet", "--progress-bar", "off", SN_REQUIREMENT,
             f"duckdb=={duckdb.__version__}", "pyarrow"], check=True)
        stamp.touch()
    return py


class SmartNoiseSystem:
    """The SmartNoise worker subprocess (its own venv); times measured inside the worker around execute()."""

    def __init__(self, data_dir: Path, threads: int) -> None:
        py = ensure_smartnoise_venv()
        self.proc = subprocess.Popen(
            [str(py), str(SN_WORKER), str(data_dir), str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        hello = self._read()
        self.load_seconds = float(hello["load_seconds"])
        self.versions: dict[str, str] = hello.get("versions", {})

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the SmartNoise worker exited")
        result: dict[str, Any] = json.loads(line)
        return result

    def call(self, q: Query, epsilon: float = EPSILON, *, cache: bool = False, cost: bool = False) -> dict[str, Any]:
        """One request to the worker."""
        assert self.proc.stdin is not None
        msg = {"op": "run", "sql": q.sql, "epsilon": epsilon, "delta": DELTA,
               "public_keys": q.sn_public_keys, "cache": cache, "cost": cost}
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def run(self, q: Query, epsilon: float = EPSILON, *, cache: bool = False) -> Outcome:
        """Run and convert to an Outcome."""
        r = self.call(q, epsilon, cache=cache)
        if not r["ok"]:
            return Outcome(unsupported=r["error"])
        rows = []
        for row in r["rows"]:
            rows.append((tuple(row[: q.keys]), [float(v) for v in row[q.keys:]]))
        return Outcome(seconds=float(r["seconds"]), rows=rows)

    def close(self) -> None:
        """Stop the worker."""
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
