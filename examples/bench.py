"""`make bench` (`python -m examples.bench [--quick] [--sizes 1000000,10000000]`): latency, accuracy and
ledger costs of the gateway, side by side with plain DuckDB (the floor) and SmartNoise SQL (a peer).

Writes BENCHMARKS.md (table, exact command, machine facts) and bench-results.json (everything measured).

* Data: `examples.generate_data` at each size, cached in `.bench/data/<size>/seed<seed>/` (git-ignored).
* Systems, timed interleaved (every repetition runs every query on every system, in a rotating order,
  so machine noise hits all of them alike):
  - `gateway`: the real gRPC stubs over mTLS to a real gateway (started in this process) and its real
    sandbox process, consumer `bench` with a large budget, epsilon 1.0 per query;
  - `duckdb`: the same SQL text in an in-process DuckDB over in-memory tables loaded from the same Parquet
    (no truncation, clamping or noise: the floor);
  - `smartnoise`: SmartNoise SQL in its own venv (`.bench/venv-smartnoise`, created on first use) over the
    same kind of DuckDB tables, in a worker subprocess (`examples/bench_smartnoise_worker.py`).
* Accuracy at epsilon 1 and 0.1 (consumer `accuracy`, huge budget); the cost of charging and auditing per
  request (median and p99: the real gateway side by side with a stand-in that skips both, defined only in
  `examples/bench_standins.py`), with the machine's floors (mTLS round trip, durable commit, fsync); and a
  per-stage profile of the gateway's request path.

The workload is `WORKLOAD` below: re-run after other branches merge and the "unsupported" rows fill in.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import query_service_pb2 as q_pb
from privacy_gateway.v1 import query_service_pb2_grpc as q_grpc

from examples.bench_floor import FloorSystem
from examples.bench_standins import bare_gateway
from examples.generate_data import generate
from gateway.identity import certs
from gateway.rpc.server import Gateway, start_gateway
from gateway.settings import ROOT, load_settings
from sandbox.client import SandboxProcess, SandboxStartError

BENCH_DIR = ROOT / ".bench"
SN_VENV = BENCH_DIR / "venv-smartnoise"
SN_WORKER = Path(__file__).resolve().parent / "bench_smartnoise_worker.py"
SN_REQUIREMENT = "smartnoise-sql==1.0.10"
CATALOG = ROOT / "policies" / "catalog.toml"
DATASET = "registry"
EPSILON = 1.0
SN_TARGET_SIZE = 1_000_000  # where "at least 10x faster than SmartNoise" is measured (issue #3)
ACCURACY_EPSILONS = (1.0, 0.1)
DELTA = 1e-6  # for the private-key grouped count only (partition selection needs delta > 0)

# --------------------------------------------------------------------------------------------------
# The fixed workload. `kind` drives the targets: "ungrouped" and "public_key" must be within 1.5x of
# plain DuckDB at 10M. `sn_public_keys` tells SmartNoise the keys are public (censor_dims off).
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """One workload query; the same text goes to every system."""

    id: str
    title: str
    sql: str
    kind: str  # ungrouped | public_key | private_key | median | join | preagg
    keys: int = 0  # number of group-key columns
    delta: float = 0.0
    sn_public_keys: bool = False


WORKLOAD: tuple[Query, ...] = (
    Query("count", "COUNT(*) of residents", "SELECT COUNT(*) AS n FROM residents", "ungrouped"),
    Query("sum", "SUM(income)", "SELECT SUM(income) AS total_income FROM residents", "ungrouped"),
    Query("avg", "AVG(income)", "SELECT AVG(income) AS avg_income FROM residents", "ungrouped"),
    Query(
        "avg_by_region", "AVG(income) GROUP BY region (public key, 31 regions)",
        "SELECT region, AVG(income) AS avg_income FROM residents GROUP BY region", "public_key",
        keys=1, sn_public_keys=True,
    ),
    Query(
        "count_by_birth_year", "COUNT(*) GROUP BY birth_year (int key: public domain from its bounds)",
        "SELECT birth_year, COUNT(*) AS n FROM residents GROUP BY birth_year", "private_key",
        keys=1, delta=DELTA,
    ),
    Query(
        "count_by_region_name", "COUNT(*) GROUP BY a lookup column without a domain (DP partition selection)",
        "SELECT g.name, COUNT(*) AS n FROM residents AS r JOIN regions AS g ON r.region = g.code GROUP BY g.name",
        "private_key", keys=1, delta=DELTA,
    ),
    Query("median", "MEDIAN(income)", "SELECT MEDIAN(income) AS median_income FROM residents", "median"),
    Query(
        "join", "AVG(contribution), residents JOIN social_insurance, born before 1980",
        "SELECT AVG(s.contribution) AS avg_contribution FROM residents AS r JOIN social_insurance AS s "
        "ON r.person_id = s.person_id WHERE r.birth_year < 1980",
        "join",
    ),
    Query(
        "preagg", "AVG of per-person SUM(contribution) (pre-aggregation)",
        "SELECT AVG(total) AS avg_total FROM (SELECT person_id, SUM(contribution) AS total "
        "FROM social_insurance GROUP BY person_id) AS t",
        "preagg",
    ),
)

SYSTEMS = ("gateway", "duckdb", "smartnoise")
LEDGER_NOTE = (
    "The stand-in gateway (`examples/bench_standins.py`, benchmark code only: nothing in `gateway/` can reach "
    "it) is a second gateway in the harness on the same sandbox process, with the same gRPC/mTLS server, "
    "analyzer, OpenDP pricing, sandbox round trip, response building and signed receipt, whose ledger, nested "
    "budgets, charge-once release cache, outcome records and audit log are in-memory no-ops. Requests "
    "alternate between the two gateways (and ExplainQuery) in a rotating order, so machine noise hits all "
    "alike. The real gateway makes three SQLite commits per RunQuery and waits for two fsyncs "
    "(`synchronous=FULL`): the reservation before the sandbox runs (atomic, not synced on its own); the "
    "completion with the release cache entry and the request outcome (one transaction, whose fsync also makes "
    "the reservation durable, before anything is released); and the audit entry before the answer leaves."
)

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


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def log(msg: str) -> None:
    """Progress on stderr with a timestamp."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def quantile(xs: list[float], q: float) -> float:
    """Linear-interpolated quantile (q in [0, 1])."""
    if not xs:
        return math.nan
    s = sorted(xs)
    pos = (len(s) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summary(xs: list[float]) -> dict[str, float]:
    """Median, p90, p99 and count of a list of seconds."""
    return {"n": len(xs), "median": quantile(xs, 0.5), "p90": quantile(xs, 0.9), "p99": quantile(xs, 0.99),
            "min": min(xs) if xs else math.nan}


def ms(x: float | None) -> str:
    """Seconds as a short millisecond string."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    v = x * 1000
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}" if v >= 1 else f"{v:.2f}"


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, or None when either is missing."""
    if a is None or b is None or math.isnan(a) or math.isnan(b) or b == 0:
        return None
    return a / b


def fmt_ratio(r: float | None) -> str:
    """A ratio with an x."""
    return "—" if r is None else f"{r:,.1f}x" if r >= 10 else f"{r:.2f}x"


def pct(x: float | None) -> str:
    """A relative error as a percentage."""
    if x is None or math.isnan(x):
        return "—"
    return f"{x * 100:.3g}%"


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def ensure_data(size: int, seed: int) -> tuple[Path, dict[str, Any]]:
    """Generate (or reuse) the example registries for `size` people; the marker makes the cache atomic."""
    d = BENCH_DIR / "data" / str(size) / f"seed{seed}"
    marker = d / ".complete.json"
    if marker.exists():
        return d, json.loads(marker.read_text())
    log(f"generating {size:,} people (seed {seed}) into {d} ...")
    if d.exists():
        shutil.rmtree(d)
    t0 = time.perf_counter()
    counts = generate(d, size, seed)
    info = {"people": size, "seed": seed, "rows": counts, "seconds": time.perf_counter() - t0}
    marker.write_text(json.dumps(info))
    log(f"generated in {info['seconds']:.0f} s: {counts}")
    return d, info


# --------------------------------------------------------------------------------------------------
# The three systems
# --------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """One call: elapsed seconds, or the reason it is unsupported; values for accuracy."""

    seconds: float | None = None
    unsupported: str | None = None
    rows: list[tuple[tuple[Any, ...], list[float]]] = field(default_factory=list)  # (keys, values)


def rpc_reason(error: grpc.RpcError) -> str:
    """Status code, ErrorInfo reason and message of a failed call."""
    reason = ""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                info = error_details_pb2.ErrorInfo()
                detail.Unpack(info)
                reason = info.reason
    return f"{error.code().name} {reason}: {error.details()}"  # type: ignore[attr-defined]


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

        `bare` sends it to the stand-in gateway that neither charges nor audits (`bench_standins`).

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
                return Outcome(unsupported=rpc_reason(exc))
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


# --------------------------------------------------------------------------------------------------
# Latency (interleaved)
# --------------------------------------------------------------------------------------------------


def latency(systems: dict[str, Any], reps: int, warmup: int) -> dict[str, dict[str, Any]]:
    """Probe every (query, system), warm up, then `reps` rounds of every query on every system."""
    results: dict[str, dict[str, Any]] = {q.id: {} for q in WORKLOAD}
    active: set[tuple[Query, str]] = set()
    for q in WORKLOAD:
        for name, system in systems.items():
            out = system.run(q)
            if out.unsupported is not None:
                results[q.id][name] = {"unsupported": out.unsupported}
                log(f"  {q.id:<20} {name:<10} unsupported: {out.unsupported[:110]}")
            else:
                results[q.id][name] = {"times": []}
                active.add((q, name))
    for _ in range(max(0, warmup - 1)):  # the probe was the first warm-up call
        for q in WORKLOAD:
            for name in systems:
                if (q, name) in active:
                    systems[name].run(q)
    names = list(systems)
    for rep in range(reps):
        order = names[rep % len(names):] + names[: rep % len(names)]  # rotate who goes first
        for q in WORKLOAD:
            for name in order:
                if (q, name) not in active:
                    continue
                try:
                    out = systems[name].run(q)
                except Exception as exc:
                    if name != "smartnoise":
                        raise
                    out = Outcome(unsupported=f"worker failed: {exc}")  # e.g. killed for memory
                if out.seconds is None:
                    if name != "smartnoise":
                        raise RuntimeError(f"{q.id} on {name} failed mid-run: {out.unsupported}")
                    log(f"  smartnoise failed mid-run, dropping it at this size: {out.unsupported}")
                    for q2, n2 in list(active):
                        if n2 == name:
                            active.discard((q2, n2))
                            results[q2.id][name] = {"unsupported": f"failed mid-run: {out.unsupported}"}
                    continue
                results[q.id][name]["times"].append(out.seconds)
        if rep == 0 or (rep + 1) % 5 == 0:
            log(f"  repetition {rep + 1}/{reps}")
    for by_system in results.values():
        for r in by_system.values():
            if "times" in r:
                r.update(summary(r["times"]))
    return results


# --------------------------------------------------------------------------------------------------
# Accuracy
# --------------------------------------------------------------------------------------------------


def bounded_tables(base: DuckDBSystem) -> None:
    """`b_residents` / `b_social_insurance`: the sandbox's view of the data (truncated to K rows per person with
    a salted-hash choice, numeric columns clamped to the catalog bounds). The sandbox's salt is a secret drawn at
    start-up, so when a person has more than K rows this truth differs from the sandbox's in which rows are kept;
    on the example data nobody exceeds K, so it is exact."""
    from sandbox.catalog import load_catalog
    from sandbox.plans.compile import quote_ident, render_literal

    catalog = load_catalog(CATALOG, base.data_dir)
    ds = catalog.dataset(DATASET)
    assert ds is not None
    salt = "bench"
    for name in ("residents", "social_insurance"):
        t = ds.table(name)
        assert t is not None
        cols = []
        for c in t.info.columns:
            ident = quote_ident(c.name)
            if c.lower is not None and c.upper is not None:
                cols.append(f"LEAST(GREATEST({ident}, {c.lower!r}), {c.upper!r}) AS {ident}")
            else:
                cols.append(ident)
        row = ", ".join(quote_ident(c.name) for c in t.info.columns)
        base.con.execute(
            f"CREATE OR REPLACE TABLE b_{name} AS SELECT {', '.join(cols)} FROM ("
            f"SELECT *, row_number() OVER (PARTITION BY {quote_ident(ds.privacy_unit)} ORDER BY __h) AS __rn FROM ("
            f"SELECT *, hash({render_literal(salt)}, {row}) AS __h FROM {name})) "
            f"WHERE __rn <= {t.info.max_rows_per_unit}"
        )


def max_rows_per_person(base: DuckDBSystem) -> dict[str, int]:
    """Largest number of rows one person has per table (SmartNoise caching is exact only if <= max_ids)."""
    out = {}
    for name in ("residents", "social_insurance"):
        row = base.con.execute(f"SELECT max(c) FROM (SELECT count(*) AS c FROM {name} GROUP BY person_id)").fetchone()
        out[name] = int(row[0]) if row else 0
    return out


def rel_errors(
    truth: dict[tuple[Any, ...], list[float]], rows: list[tuple[tuple[Any, ...], list[float]]]
) -> list[float]:
    """|noisy - truth| / |truth| for every released cell whose key exists in the truth (first value only)."""
    out = []
    for key, vals in rows:
        norm_key = tuple(str(k) for k in key)
        t = truth.get(norm_key)
        if t is None or not vals or t[0] == 0:
            continue
        out.append(abs(vals[0] - t[0]) / abs(t[0]))
    return out


def accuracy(
    gw: GatewaySystem, sn: SmartNoiseSystem | None, base: DuckDBSystem, reps: int
) -> dict[str, Any]:
    """Median relative error per query over `reps` releases at each epsilon; released group counts."""
    bounded_tables(base)
    per_person = max_rows_per_person(base)
    sn_cache = per_person["residents"] <= 1 and per_person["social_insurance"] <= 12
    results: dict[str, Any] = {"reps": reps, "max_rows_per_person": per_person, "smartnoise_cached_sql": sn_cache,
                               "queries": {}}
    # SmartNoise charges epsilon per noisy column (an AVG is a sum and a count, and a COUNT also feeds its
    # censoring), so at the same requested epsilon it spends up to 3x what the gateway charges. To compare
    # at equal privacy spent, it also runs with epsilon / k, where k is its own reported cost at epsilon 1.
    sn_factor: dict[str, float] = {}
    if sn is not None:
        for q in WORKLOAD:
            r = sn.call(q, EPSILON, cache=sn_cache, cost=True)
            if r["ok"] and r["cost"]:
                sn_factor[q.id] = float(r["cost"][0]) / EPSILON
        results["smartnoise_equal_spend_factor"] = sn_factor
    for q in WORKLOAD:
        def keyed(d: dict[tuple[Any, ...], list[float]]) -> dict[tuple[Any, ...], list[float]]:
            return {tuple(str(k) for k in key): v for key, v in d.items()}

        try:
            truth = keyed(base.exact(q.sql, q.keys))
        except duckdb.Error:
            continue
        bsql = q.sql.replace("FROM residents", "FROM b_residents").replace(
            "FROM social_insurance", "FROM b_social_insurance").replace(
            "JOIN social_insurance", "JOIN b_social_insurance")
        btruth = keyed(base.exact(bsql, q.keys))
        entry: dict[str, Any] = {"true_groups": len(truth)}
        for eps in ACCURACY_EPSILONS:
            row: dict[str, Any] = {}
            for name in ("gateway", "smartnoise", "smartnoise_equal"):
                if name != "gateway" and sn is None:
                    continue
                if name == "smartnoise_equal" and q.id not in sn_factor:
                    continue
                errs: list[float] = []
                berrs: list[float] = []
                groups: list[int] = []
                unsupported = None
                for _ in range(reps):
                    if name == "gateway":
                        out = gw.run(q, eps, consumer="accuracy")
                    else:
                        assert sn is not None
                        out = sn.run(q, eps / sn_factor[q.id] if name == "smartnoise_equal" else eps,
                                     cache=sn_cache)
                    if out.unsupported is not None:
                        unsupported = out.unsupported
                        break
                    errs.extend(rel_errors(truth, out.rows))
                    berrs.extend(rel_errors(btruth, out.rows))
                    groups.append(len(out.rows))
                if unsupported is not None:
                    row[name] = {"unsupported": unsupported}
                    continue
                row[name] = {"median_rel_error": quantile(errs, 0.5),
                             "median_rel_error_bounded": quantile(berrs, 0.5),
                             "median_groups_released": quantile([float(g) for g in groups], 0.5),
                             "n_cells": len(errs)}
            entry[f"eps={eps:g}"] = row
            log(f"  accuracy {q.id:<20} eps={eps:g}: " + ", ".join(
                f"{k} {pct(v.get('median_rel_error'))}" for k, v in row.items()))
        results["queries"][q.id] = entry
    if sn is not None:
        costs = {}
        for q in WORKLOAD:
            r = sn.call(q, EPSILON, cache=sn_cache, cost=True)
            if r["ok"]:
                costs[q.id] = r["cost"]
        results["smartnoise_reported_cost_at_eps1"] = costs
    return results


# Private group keys head to head: the same partition (the regions of the people born in 1930: a few to
# about sixty per region at 1M people, where thresholds matter), DP partition selection on both sides.
# SmartNoise cannot join the public lookup table, so it groups by the region code, a private key to it
# (`censor_dims` on); the gateway groups by the region's name through the lookup table, a key without a
# public domain, so it selects keys with OpenDP's Laplace threshold. Code and name are one to one.
SELECTION_GATEWAY = Query(
    "selection_gateway", "COUNT(*) GROUP BY region name (lookup, no domain), born 1930",
    "SELECT g.name, COUNT(*) AS n FROM residents AS r JOIN regions AS g ON r.region = g.code "
    "WHERE r.birth_year = 1930 GROUP BY g.name", "private_key", keys=1, delta=DELTA,
)
SELECTION_SMARTNOISE = Query(
    "selection_smartnoise", "COUNT(*) GROUP BY region code (private key), born 1930",
    "SELECT region, COUNT(*) AS n FROM residents WHERE birth_year = 1930 GROUP BY region", "private_key",
    keys=1, delta=DELTA,
)


SELECTION_WEIGHT = 3.0  # the consumer's `weights={"group_keys": 3}`: 3/4 of epsilon on selecting keys


def selection_head_to_head(
    gw: GatewaySystem, sn: SmartNoiseSystem | None, base: DuckDBSystem, reps: int
) -> dict[str, Any]:
    """Groups released under DP partition selection, gateway vs SmartNoise, at the same requested (eps, delta)
    and at equal epsilon spent; with the median relative error of the released counts."""
    def keyed(d: dict[tuple[Any, ...], list[float]]) -> dict[tuple[Any, ...], list[float]]:
        return {tuple(str(k) for k in key): v for key, v in d.items()}

    truth_gw = keyed(base.exact(SELECTION_GATEWAY.sql, 1))
    truth_sn = keyed(base.exact(SELECTION_SMARTNOISE.sql, 1))
    counts = sorted(int(v[0]) for v in truth_sn.values())
    out: dict[str, Any] = {"reps": reps, "delta": DELTA, "true_groups": len(counts),
                           "true_counts": {"min": counts[0], "median": counts[len(counts) // 2], "max": counts[-1]}
                           if counts else {},
                           "gateway_sql": SELECTION_GATEWAY.sql, "smartnoise_sql": SELECTION_SMARTNOISE.sql}
    factor = None
    if sn is not None:
        r = sn.call(SELECTION_SMARTNOISE, EPSILON, cost=True)
        if r["ok"] and r["cost"]:
            factor = float(r["cost"][0]) / EPSILON
    out["smartnoise_equal_spend_factor"] = factor
    for eps in ACCURACY_EPSILONS:
        row: dict[str, Any] = {}
        runs: list[tuple[str, Any, Query, dict[tuple[Any, ...], list[float]], float]] = [
            ("gateway", gw, SELECTION_GATEWAY, truth_gw, eps),
            ("gateway_weighted", gw, SELECTION_GATEWAY, truth_gw, eps)]
        if sn is not None:
            runs.append(("smartnoise", sn, SELECTION_SMARTNOISE, truth_sn, eps))
            if factor:
                runs.append(("smartnoise_equal", sn, SELECTION_SMARTNOISE, truth_sn, eps / factor))
        for name, system, q, truth, e in runs:
            groups, errs, unsupported = [], [], None
            for _ in range(reps):
                if name.startswith("gateway"):
                    weights = {"group_keys": SELECTION_WEIGHT} if name == "gateway_weighted" else None
                    res = system.run(q, e, consumer="accuracy", weights=weights)
                else:
                    res = system.run(q, e)
                if res.unsupported is not None:
                    unsupported = res.unsupported
                    break
                groups.append(float(len(res.rows)))
                errs.extend(rel_errors(truth, res.rows))
            row[name] = ({"unsupported": unsupported} if unsupported is not None else
                         {"median_groups_released": quantile(groups, 0.5), "min_groups_released": min(groups),
                          "median_rel_error": quantile(errs, 0.5) if errs else None})
        out[f"eps={eps:g}"] = row
        log(f"  selection head to head eps={eps:g}: " + ", ".join(
            f"{k} {v.get('median_groups_released', v.get('unsupported'))}" for k, v in row.items()))
    return out


# --------------------------------------------------------------------------------------------------
# Ledger row group and per-stage profile
# --------------------------------------------------------------------------------------------------


STAGE_ANALYZE = "analyzer (parse + plan; memoized)"
STAGE_PRICE = "OpenDP pricing (gateway)"
STAGE_RESERVE = "ledger reserve (nested budgets, BEGIN IMMEDIATE; fsync deferred to the completion)"
STAGE_COMPLETE = "ledger complete + release cache + outcome (one transaction, fsync)"
STAGE_AUDIT = "audit append (hash chain, fsync) + metrics"


class StageTimer:
    """Wraps callables in the gateway process and records how long each stage took per request."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, attr: str, stage: str) -> None:
        """Replace `owner.attr` by a timing wrapper (instance attribute or module attribute)."""
        original = getattr(owner, attr)
        had_own = isinstance(owner, type(sys)) or attr in getattr(owner, "__dict__", {})

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.times.setdefault(stage, []).append(time.perf_counter() - t0)

        setattr(owner, attr, timed)
        if had_own:
            self._undo.append(lambda: setattr(owner, attr, original))
        else:
            self._undo.append(lambda: delattr(owner, attr))

    def reset(self) -> None:
        """Forget recorded times."""
        self.times = {}

    def restore(self) -> None:
        """Undo every wrap."""
        for undo in reversed(self._undo):
            undo()
        self._undo = []


@contextmanager
def instrumented(gw: GatewaySystem) -> Iterator[StageTimer]:
    """Time the stages of the gateway's request path in this process."""
    from gateway.products.query import convert

    timer = StageTimer()
    core, path = gw.gw.core, gw.gw.path
    timer.wrap(path, "release", "server: GovernedPath.release")
    # Memoized (gateway/products/query/plancache.py): the analysis hits from the second request of a query on;
    # the pricing
    # misses, because every benchmark request asks for a slightly different epsilon (see `run`).
    timer.wrap(core.plans, "analyze", STAGE_ANALYZE)
    timer.wrap(core.plans, "price", STAGE_PRICE)
    # The governor's reserve checks every nested level in the ledger's one transaction.
    timer.wrap(path.governor, "reserve", STAGE_RESERVE)
    if path.oversight is not None:
        timer.wrap(path.oversight, "record_rpc", STAGE_AUDIT)
    if path.cache is not None:
        timer.wrap(path.cache, "get", "release cache lookup")
        timer.wrap(path.cache, "put", "release cache store (own file)")  # only if not in the ledger's file
    timer.wrap(path.ledger, "complete", STAGE_COMPLETE)
    timer.wrap(path.sandbox, "call", "sandbox round trip")
    timer.wrap(convert, "answer", "response building")
    timer.wrap(convert, "plan_info", "response building")
    try:
        yield timer
    finally:
        timer.restore()


def ledger_group(gw: GatewaySystem, reps: int) -> dict[str, Any]:
    """Issue #4: the cost of charging and auditing per request. RunQuery on the real gateway, RunQuery on the
    stand-in gateway that skips charging and auditing, and ExplainQuery, interleaved in a rotating order; the
    real gateway's durable steps timed inside it; and the physical floors (loopback mTLS round trip, fsync)."""
    q = WORKLOAD[0]
    times: dict[str, list[float]] = {"run_query": [], "run_query_bare": [], "explain_query": []}

    def call(kind: str) -> None:
        if kind == "explain_query":
            times[kind].append(gw.explain(q))
            return
        out = gw.run(q, bare=kind == "run_query_bare")
        assert out.seconds is not None
        times[kind].append(out.seconds)

    kinds = list(times)
    for _ in range(3):
        for kind in kinds:
            call(kind)
        for v in times.values():
            v.clear()
    with instrumented(gw) as timer:
        for i in range(reps):
            for j in range(len(kinds)):
                call(kinds[(i + j) % len(kinds)])
        stages = {k: list(v) for k, v in timer.times.items()}
    reserve, complete, audit = (stages.get(s, []) for s in (STAGE_RESERVE, STAGE_COMPLETE, STAGE_AUDIT))
    out: dict[str, Any] = {"query": q.sql, "reps": reps, **{k: summary(v) for k, v in times.items()},
                           "ledger_reserve": summary(reserve), "ledger_complete": summary(complete),
                           "audit_append": summary(audit), "floors": floors(gw)}
    out["difference"] = {p: out["run_query"][p] - out["run_query_bare"][p] for p in ("median", "p99")}
    # Each round has one real and one stand-in request, close in time: their differences, paired.
    out["paired_difference"] = summary([a - b for a, b in zip(times["run_query"], times["run_query_bare"],
                                                               strict=True)])
    return out


def ledger_history(root: Path, sizes: tuple[int, ...] = (0, 10_000, 100_000, 300_000), reps: int = 30
                   ) -> dict[str, Any]:
    """A reservation's cost with N earlier charges in its windows (member, organisation and data owner's cap,
    one calendar month): the ledger's bucketed sums, side by side with summing the charges of each window
    (how every reservation read its windows before schema 4). Charges are bulk-inserted (one transaction)
    into a fresh ledger under `root`."""
    import sqlite3

    from gateway.budgets.ledger import (
        _FLAG_COLUMNS,
        BudgetLimit,
        GrantKey,
        Ledger,
        Metering,
        PrivacyLoss,
        _scope,
        _window_sums,
    )
    from gateway.policy.periods import Period

    root.mkdir(parents=True, exist_ok=True)
    path = root / "history.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    ledger = Ledger(path)
    key, org = GrantKey("analyst", "registry", "research"), "bank"
    now = dt.datetime(2026, 3, 28, 12, tzinfo=dt.UTC).timestamp()
    window = Period("calendar", "month").window(now)
    big = PrivacyLoss(1e9, 0.5)
    limits = [BudgetLimit(level, big, window) for level in ("member", "organization", "dataset_cap")]  # type: ignore[arg-type]
    out: dict[str, Any] = {"sizes": {}}
    done = 0
    for n in sizes:
        con = sqlite3.connect(path, isolation_level=None)
        con.execute("BEGIN")
        con.executemany(
            "INSERT INTO charges (consumer, request_id, dataset, purpose, fingerprint, epsilon, delta, status,"
            " created_at, updated_at, organization, epsilon_units, zcdp_units) VALUES"
            " (?, ?, ?, ?, 'fp', 1e-6, 0, 'released', ?, ?, ?, 1000, 1)",
            [(key.consumer, f"h{i}", key.dataset, key.purpose, window.start + 1 + (i % 2_000_000),
              window.start + 1 + (i % 2_000_000), org) for i in range(done, n)])
        con.execute("COMMIT")
        con.close()
        done = n
        reserve, buckets, charges = [], [], []
        for i in range(reps):
            t0 = time.perf_counter()
            ledger.reserve_nested(key, request_id=f"q{n}-{i}", fingerprint="fp", cost=PrivacyLoss(1e-6),
                                  limits=limits, metering=Metering(org), now=now, durable=False)
            reserve.append(time.perf_counter() - t0)
            with ledger._connection() as conn:
                t0 = time.perf_counter()
                fast = [_window_sums(conn, lim, key, org) for lim in limits]
                buckets.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                slow = []
                for lim, got in zip(limits, fast, strict=True):  # the columns the level reads
                    where, args = _scope(lim, key, org)
                    sums = ", ".join(f"coalesce(sum({c}), 0)" for c in got)
                    row = conn.execute(f"SELECT {sums} FROM charges WHERE {where}", args).fetchone()
                    slow.append({c: min(v, 1) if c in _FLAG_COLUMNS else v for c, v in zip(got, row, strict=True)})
                charges.append(time.perf_counter() - t0)
            assert fast == slow, "bucketed sums differ from the charge sums"
        out["sizes"][str(n)] = {"reserve": summary(reserve), "window_sums_buckets": summary(buckets),
                                "window_sums_charges": summary(charges)}
        log(f"  ledger history {n:>7,} charges: reserve {ms(summary(reserve)['median'])} ms, "
            f"windows from buckets {ms(summary(buckets)['median'])} ms, summing charges "
            f"{ms(summary(charges)['median'])} ms")
    ledger.close()
    return out


def floors(gw: GatewaySystem, reps: int = 200) -> dict[str, Any]:
    """What no request can go below on this machine: a gRPC round trip over the same mTLS channel (the
    standard health check: no work in the servicer), and one durable SQLite commit (WAL, synchronous=FULL,
    long-lived connection) and one raw write + fsync in the gateway's state directory."""
    import sqlite3

    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(gw.channels["bench"])
    rtt: list[float] = []
    for i in range(reps + 5):
        t0 = time.perf_counter()
        health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        if i >= 5:
            rtt.append(time.perf_counter() - t0)
    probe = gw.settings.state_dir / "fsync-probe.sqlite3"
    con = sqlite3.connect(probe, isolation_level=None)
    commit: list[float] = []
    raw: list[float] = []
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, body BLOB)")
        for _ in range(reps):
            t0 = time.perf_counter()
            con.execute("BEGIN IMMEDIATE")
            con.execute("INSERT INTO t (body) VALUES (?)", (os.urandom(1024),))
            con.execute("COMMIT")
            commit.append(time.perf_counter() - t0)
        fd = os.open(gw.settings.state_dir / "fsync-probe.bin", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for i in range(reps):
                t0 = time.perf_counter()
                os.pwrite(fd, os.urandom(4096), (i % 64) * 4096)
                os.fsync(fd)
                raw.append(time.perf_counter() - t0)
        finally:
            os.close(fd)
    finally:
        con.close()
    return {"grpc_mtls_round_trip": summary(rtt), "sqlite_durable_commit": summary(commit),
            "write_fsync": summary(raw)}


def profile(gw: GatewaySystem, base: DuckDBSystem, reps: int, supported: list[Query]) -> dict[str, Any]:
    """Per-stage breakdown of gateway requests: client wall time split into gRPC+TLS, analyzer, pricing,
    ledger, sandbox (its DuckDB query and OpenDP noise measured separately here), response building."""
    from gateway.products.query.sql.analyze import analyze
    from sandbox.catalog import load_catalog
    from sandbox.engine.engine import stored_column
    from sandbox.engine.storage import compress, open_store, table_ref
    from sandbox.plans.compile import compile_plan, quote_ident
    from sandbox.pricing import mechanisms

    catalog = load_catalog(gw.catalog, base.data_dir)
    ds = catalog.dataset(DATASET)
    assert ds is not None
    info = gw.gw.core.catalog.dataset(DATASET)
    assert info is not None
    prepared: set[str] = set()
    out: dict[str, Any] = {}
    for q in supported:
        plan = analyze(q.sql, info)
        if plan.source is not None or plan.partition_selection:
            log(f"  profile {q.id}: skipped (the stage breakdown covers single-table, public-key plans)")
            continue
        spec = ds.table(plan.table)
        assert spec is not None
        sql_table = f"{DATASET}__{spec.name}"
        if sql_table not in prepared:  # stored as the sandbox stores it (truncation is a no-op on this data)
            if not prepared:
                open_store(base.con)
            cols = ", ".join(f"{stored_column(c)} AS {quote_ident(c.name)}" for c in spec.info.columns)
            base.con.execute(f"CREATE TABLE {table_ref(sql_table)} AS SELECT {cols} FROM {spec.name}")
            compress(base.con)
            prepared.add(sql_table)
        compiled = compile_plan(plan, spec.info, sql_table=sql_table, unit=ds.privacy_unit, max_cells=100_000,
                                stored=True)
        costs = mechanisms.price(plan, info, EPSILON)
        walls: list[float] = []
        for _ in range(2):
            gw.run(q)
        with instrumented(gw) as timer:
            for _ in range(reps):
                o = gw.run(q)
                assert o.seconds is not None
                walls.append(o.seconds)
            stages = {k: list(v) for k, v in timer.times.items()}
        duck: list[float] = []
        noise: list[float] = []
        for _ in range(reps):
            t0 = time.perf_counter()
            rows = base.con.execute(compiled.sql).fetchall()
            duck.append(time.perf_counter() - t0)
            n_keys = len(plan.group_by)
            width = len(compiled.components)
            exact = {tuple(r[:n_keys]): list(r[n_keys:]) for r in rows}
            t0 = time.perf_counter()
            for cost in costs:
                if (cost.aggregate_index, cost.component) not in compiled.components:
                    continue  # quantiles are released from bucket counts, not this vector
                j = compiled.components.index((cost.aggregate_index, cost.component))
                vec = [exact.get(cell, [0] * width)[j] or 0 for cell in compiled.cells]
                mechanisms.release_vector(cost, vec)
            noise.append(time.perf_counter() - t0)
        variants = sql_variants(base, q, compiled.sql, reps)
        med = {k: quantile(v, 0.5) for k, v in stages.items()}
        # "response building" is recorded twice per request (answer + plan_info): sum per request.
        if "response building" in stages:
            med["response building"] = quantile(stages["response building"], 0.5) * 2
        wall = quantile(walls, 0.5)
        server = med.get("server: GovernedPath.release", math.nan)
        sandbox_rt = med.get("sandbox round trip", math.nan)
        d_med, n_med = quantile(duck, 0.5), quantile(noise, 0.5)
        audit = med.get(STAGE_AUDIT, math.nan)
        breakdown = {
            "client wall time (median)": wall,
            "gRPC + mTLS + servicer (wall - server - audit)": wall - server - audit,
            STAGE_AUDIT: audit,
            STAGE_ANALYZE: med.get(STAGE_ANALYZE, math.nan),
            STAGE_PRICE: med.get(STAGE_PRICE, math.nan),
            STAGE_RESERVE: med.get(STAGE_RESERVE, math.nan),
            STAGE_COMPLETE: med.get(STAGE_COMPLETE, math.nan),
            "sandbox round trip": sandbox_rt,
            "  of which DuckDB (compiled plan, same tables, in-process)": d_med,
            "  of which OpenDP noise (release_vector)": n_med,
            "  of which socket, framing, sandbox Python (rest)": sandbox_rt - d_med - n_med,
            "response building": med.get("response building", math.nan),
        }
        out[q.id] = {"sql": q.sql, "compiled_sql": compiled.sql, "reps": reps, "stages_median_s": breakdown,
                     "sql_variants_median_s": variants}
        log(f"  profile {q.id}: wall {ms(wall)} ms, sandbox {ms(sandbox_rt)} ms, duckdb {ms(d_med)} ms")
    return out


_DOMAIN_FILTER = re.compile(r' WHERE \("[^"]+" IN \([^()]*\)\)')


def sql_variants(base: DuckDBSystem, q: Query, compiled_sql: str, reps: int) -> dict[str, float]:
    """What the sandbox's SQL costs next to the natural SQL on plain DuckDB's table, and without the
    public-domain IN filter (which the compiler adds so that no key outside its domain is ever counted)."""
    candidates = {
        "natural SQL, raw table (the plain DuckDB floor)": q.sql,
        "compiled plan as the sandbox runs it (its stored table)": compiled_sql,
        "compiled plan without the domain IN filter": _DOMAIN_FILTER.sub("", compiled_sql),
    }
    out = {}
    for label, sql in candidates.items():
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            base.con.execute(sql).fetchall()
            times.append(time.perf_counter() - t0)
        out[label] = quantile(times, 0.5)
    return out


# --------------------------------------------------------------------------------------------------
# Machine facts and report
# --------------------------------------------------------------------------------------------------


def machine_facts(sn_versions: dict[str, str]) -> dict[str, Any]:
    """Cores, RAM, CPU model, versions, date, git commit."""
    import importlib.metadata as md

    mem_gib = math.nan
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = int(line.split()[1]) / 1024**2
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, check=False).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                    capture_output=True, text=True, check=False).stdout.strip())
    except OSError:
        commit, dirty = "?", False
    versions = {p: md.version(p) for p in ("duckdb", "opendp", "grpcio", "protobuf")}
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(), "ram_gib": round(mem_gib, 1), "cpu": cpu,
        "os": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(), "versions": versions, "smartnoise_env": sn_versions,
        "git_commit": commit + ("-dirty" if dirty else ""),
        "load_average_end": round(os.getloadavg()[0], 2),  # other work on the machine skews every figure
    }


def _lat(r: dict[str, Any] | None) -> tuple[str, str]:
    if r is None:
        return "not run", "not run"
    if "unsupported" in r:
        return "unsupported", "—"
    return ms(r["median"]), ms(r["p90"])


def render(results: dict[str, Any]) -> str:
    """BENCHMARKS.md."""
    m = results["machine"]
    cfg = results["config"]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`examples/bench.py`); do not edit by hand.",
        "",
        f"Command: `{results['command']}`",
        "",
        f"Machine: {m['cores']} cores ({m['cpu']}), {m['ram_gib']} GiB RAM, {m['os']}; Python {m['python']}; "
        f"duckdb {m['versions']['duckdb']}, opendp {m['versions']['opendp']}, grpcio {m['versions']['grpcio']}; "
        + (f"SmartNoise env: smartnoise-sql {m['smartnoise_env'].get('smartnoise-sql', '?')}, "
           f"opendp {m['smartnoise_env'].get('opendp', '?')}, duckdb {m['smartnoise_env'].get('duckdb', '?')}; "
           if m["smartnoise_env"] else "")
        + f"date {m['date']}; commit {m['git_commit']}"
        + (f"; 1-minute load average {m['load_average_start']:g} at the start, {m['load_average_end']:g} at "
           "the end (2 cores; other users' work on the machine skews every figure)"
           if "load_average_start" in m else "") + ".",
        "",
        f"Method: {cfg['reps']} interleaved repetitions after {cfg['warmup']} warm-up call(s) per query and system "
        f"(each repetition runs every query on every system, rotating which system goes first); epsilon {EPSILON} "
        f"per query (delta {DELTA:g} only for the private-key group-by). Times in milliseconds; ratios are "
        "of medians from the same run. `gateway` = real gRPC stubs over mTLS to a gateway and sandbox "
        "process started by the harness (the gateway also truncates each person to K rows, clamps to the "
        "catalog bounds, charges the durable ledger and adds OpenDP noise); `duckdb` = the same SQL in "
        "plain in-process DuckDB over in-memory tables from the same Parquet (exact, no bounding: the "
        "floor); `smartnoise` = SmartNoise SQL over the same kind of DuckDB tables, in its own venv, time "
        f"measured inside its worker around `execute()`; run at sizes {cfg['smartnoise_sizes']} only, "
        f"interleaved with the others up to {SN_TARGET_SIZE:,} people and in a pass of its own above that "
        "(its multi-second queries would skew the milliseconds the 10M target compares). "
        "`stack floor` = the least a request must do on this stack (`examples/bench_floor.py`): an mTLS gRPC "
        "call, a Unix-socket hop to a separate sandbox process that checks one OpenDP map per value, runs the "
        "aggregate in DuckDB over the clamped INTEGER column and adds OpenDP noise, and one durable SQLite "
        "commit; no policy, budgets, SQL analysis, audit, receipt or intervals. COUNT, SUM and AVG only.",
        "",
    ]
    if cfg.get("quick"):
        lines += ["**Quick (smoke) run**: 100k people and few repetitions; not a result.", ""]
    lines += ["## Latency", "",
              "| people | query | gateway median | p90 | duckdb median | p90 | smartnoise median | p90 "
              "| gateway / duckdb | smartnoise / gateway | stack floor median | stack floor / duckdb |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    missed: list[str] = []
    for size_key, size_res in results["sizes"].items():
        size = int(size_key)
        for q in WORKLOAD:
            r = size_res["latency"][q.id]
            g, d, s = r.get("gateway"), r.get("duckdb"), r.get("smartnoise")
            gm = g.get("median") if g else None
            dm = d.get("median") if d else None
            sm = s.get("median") if s else None
            gd, sg = ratio(gm, dm), ratio(sm, gm)
            gd_txt, sg_txt = fmt_ratio(gd), fmt_ratio(sg)
            if size >= 10_000_000 and q.kind in ("ungrouped", "public_key") and gd is not None:
                ok = gd <= 1.5
                gd_txt += " ✅" if ok else " ❌ (target ≤ 1.5x)"
                if not ok:
                    missed.append(f"{size:,} people, {q.id}: gateway/duckdb {gd:.1f}x (target ≤ 1.5x)")
            if size == SN_TARGET_SIZE and sg is not None:
                ok = sg >= 10
                sg_txt += " ✅" if ok else " ❌ (target ≥ 10x)"
                if not ok:
                    missed.append(f"{size:,} people, {q.id}: smartnoise/gateway {sg:.1f}x (target ≥ 10x)")
            cells = [*_lat(g), *_lat(d), *_lat(s)]
            f = r.get("stack_floor")
            fm = f.get("median") if f else None
            floor_txt = f"{ms(fm)} | {fmt_ratio(ratio(fm, dm))}" if fm is not None else "— | —"
            lines.append(f"| {size:,} | {q.title} | " + " | ".join(cells) + f" | {gd_txt} | {sg_txt} | {floor_txt} |")
    lines += ["", "Queries (one list, `WORKLOAD` in `examples/bench.py`):", ""]
    for q in WORKLOAD:
        lines.append(f"* `{q.id}`: `{q.sql}`")
    lines += ["", "### Unsupported", ""]
    seen = False
    for size_key, size_res in results["sizes"].items():
        for q in WORKLOAD:
            for name, r in size_res["latency"][q.id].items():
                if "unsupported" in r and name != "stack_floor":  # by design: COUNT, SUM and AVG only
                    seen = True
                    lines.append(f"* {int(size_key):,} people, `{q.id}` on {name}: {r['unsupported']}")
    if not seen:
        lines.append("None.")
    lines += ["", "### Targets", ""]
    lines += ([f"* **Missed**: {x}" for x in missed] if missed else ["All targets shown in the table were met."])
    lines += ["", "(Targets: at 10M, gateway median within 1.5x of plain DuckDB for ungrouped and public-key "
              "queries; at 1M, SmartNoise at least 10x slower than the gateway on every query both support. "
              "A target is only marked where the run has that size.)", ""]
    prof = results.get("profile")
    if prof:
        lines += [f"## Where the gateway's time goes ({prof['people']:,} people, median of {prof['reps']} "
                  "requests per query, ms)", ""]
        ids = list(prof["queries"])
        stages = list(next(iter(prof["queries"].values()))["stages_median_s"]) if ids else []
        lines.append("| stage | " + " | ".join(f"`{i}`" for i in ids) + " |")
        lines.append("|---|" + "---:|" * len(ids))
        def stage_ms(x: float) -> str:
            return "≈0 (below noise)" if x < 0 else ms(x)

        for st in stages:
            lines.append(f"| {st} | "
                         + " | ".join(stage_ms(prof["queries"][i]["stages_median_s"][st]) for i in ids) + " |")
        variants = list(next(iter(prof["queries"].values())).get("sql_variants_median_s", {})) if ids else []
        if variants:
            lines += ["", "The sandbox's SQL next to the natural SQL (in-process DuckDB; the sandbox's table stored "
                      "as the sandbox stores it: clamped, narrowed, in the compressed store; median ms; the DuckDB "
                      "row above is the second line):", "",
                      "| SQL | " + " | ".join(f"`{i}`" for i in ids) + " |", "|---|" + "---:|" * len(ids)]
            for v in variants:
                lines.append(f"| {v} | " + " | ".join(ms(prof["queries"][i]["sql_variants_median_s"][v])
                                                     for i in ids) + " |")
        lines += ["", "Stages are timed by wrapping the gateway's own functions in this process (server-side "
                  "`GovernedPath.release`, analyzer, pricing, ledger calls, the sandbox client call, response "
                  "building); the sandbox's DuckDB and OpenDP shares are the compiled plan's SQL run in-process "
                  "on a table stored as the sandbox stores it, and `release_vector` on its output; the rest of the "
                  "sandbox round trip is the Unix socket, message encoding and the sandbox's Python.", ""]
    acc = results.get("accuracy")
    if acc:
        lines += [f"## Accuracy ({acc['people']:,} people, {acc['reps']} releases per query and epsilon)", "",
                  "Median relative error |noisy - truth| / |truth| over all releases (and, for grouped queries, "
                  "over all released groups). Truth = exact answer on the raw data; *bounded* = on the data the "
                  "sandbox sees (truncated to K rows per person with the sandbox's own choice, clamped to the "
                  f"catalog bounds). Largest rows per person: {acc['max_rows_per_person']} (K = 1 and 12), so "
                  "truncation is " + ("a no-op here" if acc["smartnoise_cached_sql"] else "active here") + ".", "",
                  "| query | ε | gateway | gateway vs bounded truth | smartnoise (same requested ε) "
                  "| smartnoise at equal ε spent | groups released (true: n) |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for q in WORKLOAD:
            e = acc["queries"].get(q.id)
            if not e:
                continue
            for eps in ACCURACY_EPSILONS:
                row = e.get(f"eps={eps:g}", {})
                g, s = row.get("gateway", {}), row.get("smartnoise", {})
                se = row.get("smartnoise_equal", {})

                def cell(x: dict[str, Any], k: str) -> str:
                    if "unsupported" in x:
                        reason = x["unsupported"]
                        if "Noise scale is too large" in reason:
                            return "refused (noise scale too large)"
                        return "unsupported"
                    return pct(x.get(k)) if x else "not run"

                groups = ""
                if q.keys:
                    parts = []
                    for name, x in (("gateway", g), ("smartnoise", s)):
                        if x and "unsupported" not in x:
                            parts.append(f"{name} {x['median_groups_released']:.0f}")
                    groups = ", ".join(parts) + f" (n = {e['true_groups']})"
                lines.append(f"| `{q.id}` | {eps:g} | {cell(g, 'median_rel_error')} | "
                             f"{cell(g, 'median_rel_error_bounded')} | {cell(s, 'median_rel_error')} "
                             f"| {cell(se, 'median_rel_error') if se or s else '—'} | {groups} |")
        verdicts = []
        for q in WORKLOAD:
            for eps in ACCURACY_EPSILONS:
                row = acc["queries"].get(q.id, {}).get(f"eps={eps:g}", {})
                g, se = row.get("gateway", {}), row.get("smartnoise_equal", {})
                if g.get("median_rel_error") is None or se.get("median_rel_error") is None:
                    continue
                ok = g["median_rel_error"] <= se["median_rel_error"]
                verdicts.append(f"`{q.id}` ε={eps:g}: " + ("✅" if ok else "❌") + f" {pct(g['median_rel_error'])}"
                                f" vs {pct(se['median_rel_error'])}")
        if verdicts:
            lines += ["", "Accuracy target (gateway no worse than SmartNoise at equal ε spent, on every query "
                      "both answer): " + "; ".join(verdicts) + "."]
        if acc.get("smartnoise_reported_cost_at_eps1"):
            reported = acc["smartnoise_reported_cost_at_eps1"].items()
            costs = ", ".join(f"`{k}` ε={v[0]:g}, δ={v[1]:g}" for k, v in reported)
            lines += ["", "SmartNoise's own accounting for one query at ε = 1 (it charges ε per noisy column): "
                      f"{costs}. The gateway charges at most the requested ε per query (split between components). "
                      "*At equal ε spent* runs SmartNoise at ε / k with k its own reported ε at ε = 1, so both "
                      "systems spend the same ε per query (SmartNoise still also spends its δ; the gateway's "
                      "pure-DP queries spend none)."]
        sel = acc.get("selection")
        if sel:
            tc = sel["true_counts"]
            lines += ["", "### Private group keys head to head (DP partition selection on both sides)", "",
                      f"The people born in 1930 per region: {sel['true_groups']} regions, true counts from "
                      f"{tc.get('min')} to {tc.get('max')} (median {tc.get('median')}), δ = {sel['delta']:g}, "
                      f"{sel['reps']} releases per system and ε. The gateway: `{sel['gateway_sql']}` (the region's "
                      "name through the public lookup table: a key without a public domain, selected with OpenDP's "
                      "Laplace threshold on half of ε, the count on the other half). SmartNoise (it cannot join): "
                      f"`{sel['smartnoise_sql']}` (the region code as a private key: `censor_dims` on). Code and "
                      "name are one to one, so both release from the same partition.", "",
                      "| ε | gateway: groups released (median, min) "
                      f"| gateway, `weights={{\"group_keys\": {SELECTION_WEIGHT:g}}}` "
                      "| smartnoise, same requested (ε, δ) "
                      "| smartnoise at equal ε spent | median relative error: gateway / weighted / smartnoise equal |",
                      "|---:|---|---|---|---|---|"]
            verdicts = []
            for eps in ACCURACY_EPSILONS:
                row = sel.get(f"eps={eps:g}", {})

                def released(x: dict[str, Any]) -> str:
                    if not x:
                        return "not run"
                    if "unsupported" in x:
                        return "unsupported"
                    return f"{x['median_groups_released']:.0f} ({x['min_groups_released']:.0f})"

                g, s_, se = row.get("gateway", {}), row.get("smartnoise", {}), row.get("smartnoise_equal", {})
                gw_w = row.get("gateway_weighted", {})
                lines.append(f"| {eps:g} | {released(g)} | {released(gw_w)} | {released(s_)} | {released(se)} | "
                             f"{pct(g.get('median_rel_error'))} / {pct(gw_w.get('median_rel_error'))} / "
                             f"{pct(se.get('median_rel_error'))} |")
                if g.get("median_groups_released") is not None and se.get("median_groups_released") is not None:
                    ok = g["median_groups_released"] >= se["median_groups_released"]
                    verdicts.append(f"ε={eps:g}: " + ("✅" if ok else "❌")
                                    + f" {g['median_groups_released']:.0f} vs {se['median_groups_released']:.0f}")
            if verdicts:
                lines += ["", "Groups target (the gateway releases at least as many groups as SmartNoise at the "
                          "same ε spent and δ): " + "; ".join(verdicts) + "."]
        if acc["smartnoise_cached_sql"]:
            lines += ["", "SmartNoise's exact SQL result is memoised across accuracy repetitions (its per-person "
                      "sampling is a no-op on this data, so its outputs have the same distribution); latency "
                      "runs never memoise."]
        lines.append("")
    led = results.get("ledger")
    if led:
        def row(label: str, x: dict[str, float]) -> str:
            return f"| {label} | {ms(x['median'])} | {ms(x['p99'])} |"

        fl = led["floors"]
        lines += [f"## Cost of charging and auditing ({led['people']:,} people, {led['reps']} interleaved "
                  f"rounds, `{led['query']}`)", "",
                  "| request | median ms | p99 ms |", "|---|---:|---:|",
                  row("RunQuery, real gateway: charged durably and audited", led["run_query"]),
                  row("RunQuery, stand-in gateway that skips charging and auditing (benchmark only)",
                      led["run_query_bare"]),
                  f"| **difference: charging and auditing per request** | **{ms(led['difference']['median'])}** "
                  f"| **{ms(led['difference']['p99'])}** |",
                  *([row("the same, paired: real minus stand-in request of the same round",
                         led["paired_difference"])] if "paired_difference" in led else []),
                  row("ExplainQuery, real gateway (validates and prices; audited; no charge, no sandbox)",
                      led["explain_query"]),
                  "", "Inside the real gateway's RunQuery (timed around the calls, same run):", "",
                  "| durable step | median ms | p99 ms |", "|---|---:|---:|",
                  row("ledger reserve: nested budgets checked and charged (one transaction; its fsync is the "
                      "completion's)", led["ledger_reserve"]),
                  row("ledger complete + release cache + request outcome (one transaction, fsync: makes the "
                      "reservation durable too)", led["ledger_complete"]),
                  row("audit append: hash chain, MAC (one transaction, fsync; every RPC)", led["audit_append"]),
                  "", "Floors on this machine (same run):", "",
                  "| floor | median ms | p99 ms |", "|---|---:|---:|",
                  row("gRPC round trip over the same mTLS channel (health check: no servicer work)",
                      fl["grpc_mtls_round_trip"]),
                  row("one durable SQLite commit (WAL, synchronous=FULL) in the state directory",
                      fl["sqlite_durable_commit"]),
                  row("one 4 KiB write + fsync in the state directory", fl["write_fsync"]),
                  "", "The difference row subtracts the stand-in's median (p99) from the real gateway's; the paired "
                  "row takes the median (p99) of the per-round differences, which includes both requests' noise. "
                  + LEDGER_NOTE, ""]
        hist = led.get("history")
        if hist:
            lines += ["### A reservation with a long history (one calendar month, three levels)", "",
                      "| charges already in the month | reservation (median ms) | the three window sums from "
                      "buckets | the same sums over the charges (before schema 4) |", "|---:|---:|---:|---:|"]
            for n, x in hist["sizes"].items():
                lines.append(f"| {int(n):,} | {ms(x['reserve']['median'])} | {ms(x['window_sums_buckets']['median'])} "
                             f"| {ms(x['window_sums_charges']['median'])} |")
            lines += ["", "Charges bulk-inserted into a fresh ledger (`ledger_history` in `examples/bench.py`); "
                      "the bucketed sums are checked equal to the charge sums on every repetition.", ""]
    for size_key, size_res in results["sizes"].items():
        if size_res.get("sandbox_full_catalog_failure"):
            lines += [f"**At {int(size_key):,} people the sandbox could not load the full catalog** "
                      f"(`{size_res['sandbox_full_catalog_failure']}`, with a 12 GiB DuckDB memory limit and no "
                      "address-space cap): its per-person truncation (a window function over every row, here "
                      "about 50M social-insurance rows) runs out of memory. The gateway rows at this size use a "
                      "copy of the catalog with `registry.residents` only; queries on `social_insurance` show "
                      "the gateway's refusal for an unknown table.", ""]
    lines += ["## Setup per size", ""]
    for size_key, size_res in results["sizes"].items():
        lines.append(f"* {int(size_key):,} people: rows {size_res['data']['rows']}; generated in "
                     f"{size_res['data']['seconds']:.0f} s (cached afterwards); sandbox start (load, truncate, lock) "
                     f"{size_res['sandbox_load_seconds']:.1f} s; "
                     f"plain DuckDB load {size_res['duckdb_load_seconds']:.1f} s"
                     + (f"; SmartNoise worker load {size_res['smartnoise_load_seconds']:.1f} s"
                        if size_res.get("smartnoise_load_seconds") is not None else ""))
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(prog="python -m examples.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1000000,10000000", help="comma-separated numbers of people")
    p.add_argument("--quick", action="store_true", help="smoke run: 100k people, few repetitions (< 2 min)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default 15; quick 5)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--accuracy-reps", type=int, default=None, help="releases per query and epsilon (default 50)")
    p.add_argument("--ledger-reps", type=int, default=None, help="RunQuery/ExplainQuery pairs (default 200)")
    p.add_argument("--profile-reps", type=int, default=None, help="requests per query in the profile (default 20)")
    p.add_argument("--smartnoise-max", type=int, default=10_000_000,
                   help="largest size SmartNoise runs at (default 10M; 0 disables it)")
    p.add_argument("--threads", type=int, default=2, help="DuckDB threads for every system")
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--json", type=Path, default=ROOT / "bench-results.json")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes = "100000"
    args.size_list = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    args.reps = args.reps or (5 if args.quick else 15)
    args.accuracy_reps = args.accuracy_reps or (10 if args.quick else 50)
    args.ledger_reps = args.ledger_reps or (30 if args.quick else 200)
    args.profile_reps = args.profile_reps or (5 if args.quick else 20)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run everything and write the report."""
    args = parse_args(argv)
    t_start = time.perf_counter()
    load_start = round(os.getloadavg()[0], 2)
    command = "make bench" + (f" ARGS='{' '.join(sys.argv[1:])}'" if sys.argv[1:] else "")
    sn_sizes = [s for s in args.size_list if s <= args.smartnoise_max]
    results: dict[str, Any] = {
        "command": command,
        "config": {"sizes": args.size_list, "seed": args.seed, "reps": args.reps, "warmup": args.warmup,
                   "accuracy_reps": args.accuracy_reps, "ledger_reps": args.ledger_reps, "quick": args.quick,
                   "epsilon": EPSILON, "delta_private_keys": DELTA, "threads": args.threads,
                   "smartnoise_sizes": sn_sizes},
        "workload": [q.__dict__ for q in WORKLOAD],
        "sizes": {},
    }
    sn_versions: dict[str, str] = {}
    accuracy_size = sn_sizes[0] if sn_sizes else args.size_list[0]
    for size in args.size_list:
        data_dir, data_info = ensure_data(size, args.seed)
        root = Path(tempfile.mkdtemp(prefix="pgw-bench-"))  # short: Unix socket paths are limited
        log(f"== {size:,} people: starting sandbox + gateway, plain DuckDB"
            + (", SmartNoise" if size in sn_sizes else ""))
        gw, load_failure = start_gateway_system(data_dir, root, args.threads)
        base = DuckDBSystem(data_dir, args.threads)
        floor = FloorSystem(data_dir, root / "floor", args.threads, income_upper())
        sn = None
        if size in sn_sizes:
            try:
                sn = SmartNoiseSystem(data_dir, args.threads)
            except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
                log(f"  SmartNoise could not start at this size: {exc}")
        if sn is not None:
            sn_versions = sn.versions
        try:
            systems: dict[str, Any] = {"gateway": gw, "duckdb": base, "stack_floor": floor}
            # SmartNoise joins the interleaving where its speed is a target (1M and below); above that its
            # queries take seconds and its worker's memory traffic skews the milliseconds the 10M target
            # compares, so it gets a pass of its own after the others.
            separate_sn = sn is not None and size > SN_TARGET_SIZE
            if sn is not None and not separate_sn:
                systems["smartnoise"] = sn
            log(f"  loaded: sandbox {gw.sandbox_load_seconds:.1f} s, duckdb {base.load_seconds:.1f} s"
                + (f", smartnoise {sn.load_seconds:.1f} s" if sn else ""))
            lat = latency(systems, args.reps, args.warmup)
            if separate_sn:
                log("  smartnoise on its own ...")
                for qid, by_system in latency({"smartnoise": sn}, args.reps, args.warmup).items():
                    lat[qid].update(by_system)
            size_res: dict[str, Any] = {
                "data": data_info, "sandbox_load_seconds": gw.sandbox_load_seconds,
                "duckdb_load_seconds": base.load_seconds,
                "smartnoise_load_seconds": sn.load_seconds if sn else None, "latency": lat,
                "sandbox_full_catalog_failure": load_failure,
            }
            results["sizes"][str(size)] = size_res
            supported = [q for q in WORKLOAD if "times" in lat[q.id].get("gateway", {})]
            if size == args.size_list[-1]:
                log("  profiling the gateway's stages ...")
                results["profile"] = {"people": size, "reps": args.profile_reps,
                                      "queries": profile(gw, base, args.profile_reps, supported)}
            if size == accuracy_size:
                log("  accuracy ...")
                acc = accuracy(gw, sn, base, args.accuracy_reps)
                acc["people"] = size
                acc["selection"] = selection_head_to_head(gw, sn, base, args.accuracy_reps)
                results["accuracy"] = acc
                log("  ledger row group ...")
                led = ledger_group(gw, args.ledger_reps)
                led["people"] = size
                log("  ledger history ...")
                led["history"] = ledger_history(ROOT / ".bench" / "ledger-history")
                results["ledger"] = led
        finally:
            if sn is not None:
                sn.close()
            floor.close()
            base.close()
            gw.close()
            shutil.rmtree(root, ignore_errors=True)
    results["machine"] = {**machine_facts(sn_versions), "load_average_start": load_start}
    results["total_seconds"] = time.perf_counter() - t_start
    args.json.write_text(json.dumps(results, indent=1, default=str))
    args.out.write_text(render(results))
    log(f"wrote {args.out} and {args.json} in {results['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

