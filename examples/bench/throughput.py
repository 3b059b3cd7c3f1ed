"""Throughput on one node: closed-loop clients (each its own process, certificate identity and gRPC channel)
against one sandbox process and 1 or 2 gateway processes on one port, SQLite state.

Each client sends RunQuery back to back (a fresh request id and a slightly different epsilon every call, so
the charge-once release cache never answers). After a warm-up, a window of `seconds` is measured: the answers
that arrived in it, their latencies, and the CPU seconds every process of the rig used in it (gateway
processes, sandbox, clients; from /proc), per answer. Refusals (RESOURCE_EXHAUSTED from admission control)
are counted apart and are not throughput.

`python -m examples.bench.throughput` runs the table alone and replaces its section of BENCHMARKS.md;
`make bench` runs it at the largest size. `storage_urls` are where the gateway's state lives, one rig set
each, measured side by side: None is SQLite in the rig's state directory; a PostgreSQL URL names a server
(any database on it), and every rig gets a fresh database there (so rigs never share a ledger or a chain).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from examples.bench.common import ensure_data, log, ms, quantile
from examples.bench.loadclient import client
from gateway.settings import ROOT

__all__ = ["CLIENT_COUNTS", "QUERIES", "Rig", "render_throughput", "run_table"]

CLIENT_COUNTS = (1, 8, 32, 64)
QUERIES = {
    "count": "SELECT COUNT(*) AS n FROM residents",
    "avg_by_region": "SELECT region, AVG(income) AS avg_income FROM residents GROUP BY region",
    # `{n}` is a different number above 10^12 in every call of a client (`loadclient`): each call is another
    # plan, so the sandbox's exact-aggregate cache never has it (misses), and the filter keeps every row; the two
    # above repeat one plan per client (hits from its 2nd call).
    "count_where": "SELECT COUNT(*) AS n FROM residents WHERE income < {n}",
    "avg_by_region_where": "SELECT region, AVG(income) AS avg_income FROM residents WHERE income < {n} GROUP BY region",
}
DEFAULT_QUERIES = tuple(QUERIES)
DATASET = "registry"
SECTION_START = "<!-- throughput:start -->"
SECTION_END = "<!-- throughput:end -->"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _policy(n: int) -> str:
    parts = ['schema = "privacy_gateway.operator.v1"\n']
    for i in range(n):
        parts.append(f'[consumers.load{i:02d}]\norganization = "Benchmark (throughput)"\n')
    for i in range(n):
        parts.append(
            f'[[grants]]\nconsumer = "load{i:02d}"\ndataset = "registry"\npurpose = "benchmark"\n'
            'privacy_definition = "approx_dp"\nepsilon = 1000000000.0\ndelta = 0.5\nmax_epsilon_per_query = 1.0\n')
    return "\n".join(parts)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Rig:
    """A sandbox process and `gateways` gateway processes sharing one port and one state directory."""

    data_dir: Path
    root: Path
    gateways: int = 1
    threads: int = 2
    max_clients: int = max(CLIENT_COUNTS)
    storage_url: str | None = None
    profile_dir: Path | None = None
    profile: str = "stages"  # with a profile_dir: "stages" (CPU per stage, cheap) or "cprofile" (every function)
    gw_args: list[str] = field(default_factory=list)  # extra `examples.bench.gwproc` flags (experiments)
    code_dir: Path | None = None  # run the gateway processes from this copy of the tree (A/B of a code change)
    settings: dict[str, Any] = field(default_factory=dict)  # gateway settings over the rig's (experiments)
    sandbox_args: list[str] = field(default_factory=list)  # extra sandbox flags (experiments)
    port: int = 0
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)

    def start(self) -> None:
        """Start the sandbox, then the gateway processes one after another (the first creates the keys)."""
        from examples.bench.systems import without_caps
        from gateway.identity import certs
        from sandbox.client import SandboxProcess

        self.root.mkdir(parents=True, exist_ok=True)
        self.tls = self.root / "tls"
        self.names = [f"load{i:02d}" for i in range(self.max_clients)]
        certs.write_dev_pki(self.tls, clients=self.names)
        policy = self.root / "operator.toml"
        policy.write_text(_policy(self.max_clients))
        catalog = without_caps(ROOT / "policies" / "catalog.toml", self.root)
        state = self.root / "state"
        state.mkdir(exist_ok=True)
        sock = state / "sandbox.sock"
        process_type = SandboxProcess
        if self.profile_dir is not None:
            out = str(self.profile_dir / "sandbox.pstats") if self.profile == "cprofile" else "--stages"
            tail = [] if self.profile == "cprofile" else [str(self.profile_dir / "sandbox.stages.json")]

            class ProfiledSandbox(SandboxProcess):
                def command(self) -> list[str]:
                    cmd = super().command()
                    return [cmd[0], "-m", "examples.bench.sbproc", out, *tail, *cmd[3:]]

            process_type = ProfiledSandbox
        self.sandbox = process_type.start(
            catalog, sock, self.data_dir,
            ["--query-timeout-ms", "120000", "--memory-limit", "8GiB", "--threads", str(self.threads),
             *self.sandbox_args],
            ready_timeout_s=900.0)
        self.pids = [self.sandbox.pid]
        self.port = _free_port()
        settings: dict[str, Any] = {
            "listen": f"127.0.0.1:{self.port}", "policy": str(policy), "catalog": str(catalog),
            "data_dir": str(self.data_dir), "state_dir": str(state), "tls_dir": str(self.tls),
            "sandbox_socket": str(sock), "start_sandbox": "false", "query_timeout_ms": 120_000,
            "max_calls_per_identity": 16,
        }
        if self.storage_url is not None:
            settings["storage_url"] = self.storage_url
        settings.update(self.settings)
        for i in range(self.gateways):
            cmd = [sys.executable, "-m", "examples.bench.gwproc", json.dumps(settings), *self.gw_args]
            if self.profile_dir is not None and self.profile == "cprofile":
                cmd += ["--profile", str(self.profile_dir / f"gateway{i}.pstats")]
            if self.profile_dir is not None and self.profile == "stages":
                cmd += ["--stages", str(self.profile_dir / f"gateway{i}.stages.json")]
            env = dict(os.environ)
            if self.code_dir is not None:
                env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.code_dir), env.get("PYTHONPATH")]))
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=self.code_dir or ROOT, env=env)
            self.procs.append(proc)
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("READY"):
                raise RuntimeError(f"gateway process {i} did not start (exit {proc.wait()})")
            self.pids.append(int(line.split()[2]))

    def stages_signal(self, sig: int) -> None:
        """With per-stage figures on: SIGUSR1 (start counting afresh) or SIGUSR2 (write them) to every process."""
        if self.profile_dir is not None and self.profile == "stages":
            for pid in self.pids:
                os.kill(pid, sig)

    def stages_snapshot(self, tag: str) -> None:
        """Write every process's per-stage figures and keep them as `<file>.<tag>` (one measured cell)."""
        if self.profile_dir is None or self.profile != "stages":
            return
        import signal

        self.stages_signal(signal.SIGUSR2)
        time.sleep(1.0)  # the sandbox answers signals between its accept loop's polls (0.5 s)
        for f in self.profile_dir.glob("*.stages.json"):
            shutil.copy(f, f.with_name(f"{tag}.{f.name}"))

    def cpu(self) -> list[float]:
        """CPU seconds so far of the sandbox and each gateway process."""
        return [cpu_seconds(p) for p in self.pids]

    def close(self) -> None:
        """Stop the gateway processes (SIGTERM: profiles are written), then the sandbox."""
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.sandbox.stop()


def measure(rig: Rig, sql: str, clients: int, warmup_s: float, seconds: float) -> dict[str, Any]:
    """`clients` closed-loop client processes; answers per second in the window, latency, CPU per answer."""
    ctx = mp.get_context("spawn")
    q: Any = ctx.Queue()
    ready: Any = ctx.Queue()
    go = ctx.Event()
    times = ctx.Array("d", 3)
    procs = [ctx.Process(target=client, args=(i, rig.names[i], str(rig.tls), rig.port, sql, DATASET, ready, go,
                                              times, q)) for i in range(clients)]
    for p in procs:
        p.start()
    for _ in procs:  # every client connected (TLS handshake done) before the clock starts
        ready.get(timeout=300)
    start_at = time.time() + 0.2
    measure_from = start_at + warmup_s
    stop_at = measure_from + seconds
    times[0], times[1], times[2] = start_at, measure_from, stop_at
    go.set()
    while time.time() < measure_from:
        time.sleep(0.01)
    import signal

    rig.stages_signal(signal.SIGUSR1)
    cpu0 = rig.cpu()
    load0 = os.getloadavg()[0]
    while time.time() < stop_at:
        time.sleep(0.01)
    cpu1 = rig.cpu()
    rig.stages_snapshot(f"c{clients}")
    results = [q.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    lat = sorted(x for r in results for x in r["lat"])
    n = len(lat)
    per = (lambda c: c / n * 1000) if n else (lambda c: float("nan"))
    return {
        "clients": clients, "answers": n, "qps": n / seconds,
        "p50": quantile(lat, 0.5), "p99": quantile(lat, 0.99),
        "refused": sum(r["refused"] for r in results), "failed": sum(r["failed"] for r in results),
        "cpu_ms_sandbox": per(cpu1[0] - cpu0[0]),
        "cpu_ms_gateways": per(sum(cpu1[1:]) - sum(cpu0[1:])),
        "cpu_ms_clients": per(sum(r["cpu"] for r in results)),
        "load": round(load0, 2),
    }


def storage_label(url: str | None) -> str:
    """The table's name for a store: sqlite, or the URL's scheme (postgres)."""
    return "sqlite" if url is None else "postgres" if url.startswith(("postgres:", "postgresql:")) else url


def fresh_database(server_url: str) -> str:
    """A new, empty database on the PostgreSQL server of `server_url`; its URL (same host, port, options)."""
    import psycopg

    name = f"pgw_thru_{os.getpid()}_{time.monotonic_ns()}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}".encode())
    parts = urlsplit(server_url)  # urlunsplit would drop an empty host's "//" (a Unix-socket URL)
    return f"{parts.scheme}://{parts.netloc}/{name}" + (f"?{parts.query}" if parts.query else "")


def run_table(data_dir: Path, *, gateways: tuple[int, ...] = (1, 2), clients: tuple[int, ...] = CLIENT_COUNTS,
              queries: tuple[str, ...] = DEFAULT_QUERIES, warmup_s: float = 3.0, seconds: float = 10.0,
              threads: int = 2, storage_url: str | None = None, profile_dir: Path | None = None,
              state_base: Path | None = None, profile: str = "stages",
              storage_urls: tuple[str | None, ...] | None = None) -> dict[str, Any]:
    """Every (storage, gateway processes, query, clients) cell. For each query one rig per storage and gateway
    count runs at once (an idle rig costs next to nothing) and each client count is measured on every rig in
    turn, rotating which goes first, so machine noise hits every rig alike (A/B interleaved). `storage_urls`
    (default: just `storage_url`) are the stores compared; a PostgreSQL one gets a fresh database per rig."""
    stores = storage_urls if storage_urls is not None else (storage_url,)
    keys = [(s, g) for s in range(len(stores)) for g in gateways]
    cells: list[dict[str, Any]] = []
    load_start = round(os.getloadavg()[0], 2)
    for qid in queries:
        rigs: dict[tuple[int, int], Rig] = {}
        roots: list[Path] = []
        try:
            for s, g in keys:
                root = Path(tempfile.mkdtemp(prefix="pgw-thru-", dir=state_base))
                roots.append(root)
                url = stores[s]
                tag = f"{qid}-g{g}" if len(stores) == 1 else f"{qid}-{storage_label(url)}-g{g}"
                rig = Rig(data_dir, root, gateways=g, threads=threads, max_clients=max(clients),
                          storage_url=None if url is None else fresh_database(url),
                          profile_dir=profile_dir / tag if profile_dir else None, profile=profile)
                if rig.profile_dir is not None:
                    rig.profile_dir.mkdir(parents=True, exist_ok=True)
                rigs[s, g] = rig
                rig.start()
                measure(rig, QUERIES[qid], min(4, rig.max_clients), 1.0, 2.0)  # warm the plan caches, the sandbox
            for i, c in enumerate(clients):
                order = keys[i % len(keys):] + keys[: i % len(keys)]
                for s, g in order:
                    cell = measure(rigs[s, g], QUERIES[qid], c, warmup_s, seconds)
                    cell.update(query=qid, gateways=g, storage=storage_label(stores[s]))
                    cells.append(cell)
                    log(f"  {qid:<14} {cell['storage']} gateways={g} clients={c:>2}: {cell['qps']:6.1f} q/s,"
                        f" p50 {ms(cell['p50'])} ms,"
                        f" p99 {ms(cell['p99'])} ms, refused {cell['refused']} failed {cell['failed']}, cpu/answer gw"
                        f" {cell['cpu_ms_gateways']:.1f} sb {cell['cpu_ms_sandbox']:.1f}"
                        f" cl {cell['cpu_ms_clients']:.1f} ms, load {cell['load']}")
        finally:
            for rig in rigs.values():
                rig.close()
            for root in roots:
                shutil.rmtree(root, ignore_errors=True)
    cells.sort(key=lambda c: (list(queries).index(c["query"]), c["storage"] != "sqlite", c["storage"], c["gateways"],
                              c["clients"]))
    return {"cells": cells, "load_start": load_start, "load_end": round(os.getloadavg()[0], 2),
            "seconds": seconds, "warmup_s": warmup_s, "cores": os.cpu_count()}


def ab(data_dir: Path, variants: dict[str, dict[str, Any]], query: str, clients: tuple[int, ...],
       warmup_s: float, seconds: float, rounds: int = 1) -> list[dict[str, Any]]:
    """Experiments side by side: one rig per variant (`gateways`, `state_base`, `gw_args`), every client count
    measured on every rig in turn, rotating which goes first, `rounds` times."""
    rigs: dict[str, Rig] = {}
    roots: list[Path] = []
    cells: list[dict[str, Any]] = []
    try:
        for label, v in variants.items():
            root = Path(tempfile.mkdtemp(prefix="pgw-ab-", dir=v.get("state_base")))
            roots.append(root)
            rig = Rig(data_dir, root, gateways=int(v.get("gateways", 1)), max_clients=max(clients),
                      gw_args=list(v.get("gw_args", [])), profile_dir=v.get("profile_dir"),
                      settings=dict(v.get("settings", {})), sandbox_args=list(v.get("sandbox_args", [])),
                      code_dir=v.get("code_dir"))
            rigs[label] = rig
            rig.start()
            measure(rig, QUERIES[query], min(4, rig.max_clients), 1.0, 2.0)
        labels = list(rigs)
        k = 0
        for r in range(rounds):
            for c in clients:
                order = labels[k % len(labels):] + labels[: k % len(labels)]
                k += 1
                for label in order:
                    cell = measure(rigs[label], QUERIES[query], c, warmup_s, seconds)
                    cell.update(query=query, variant=label, round=r)
                    cells.append(cell)
                    log(f"  {label:<22} {query} clients={c:>2}: {cell['qps']:6.1f} q/s, p50 {ms(cell['p50'])} ms,"
                        f" p99 {ms(cell['p99'])} ms, cpu/answer gw {cell['cpu_ms_gateways']:.2f}"
                        f" sb {cell['cpu_ms_sandbox']:.2f} cl {cell['cpu_ms_clients']:.2f} ms, load {cell['load']}")
    finally:
        for rig in rigs.values():
            rig.close()
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)
    return cells


def render_throughput(res: dict[str, Any], people: int) -> str:
    """The throughput section of BENCHMARKS.md (between markers, so a standalone run can replace it)."""
    lines = [SECTION_START, f"## Throughput ({people:,} people, one node)", ""]
    lines.append(
        f"Closed-loop clients, each its own process, certificate identity and gRPC channel (mTLS), sending RunQuery "
        f"back to back; {res['warmup_s']:.0f} s warm-up, then answers counted over {res['seconds']:.0f} s. One "
        f"sandbox process; 1 or 2 gateway processes on one port (SO_REUSEPORT) sharing one state directory and "
        f"one store: SQLite files in that directory, or a fresh database on a PostgreSQL server on the same "
        f"machine (Unix socket). "
        f"The clients run on the same {res['cores']} cores as the rig, so they take CPU from it (their share is "
        f"the `client CPU` column). 1-minute load average {res['load_start']} at the start, {res['load_end']} at "
        f"the end; `load` is at the start of each window. CPU columns: CPU milliseconds per answer, from /proc. "
        f"`cores used` = answers/s x (gateway + sandbox + client CPU per answer): how much of the machine the run "
        f"actually got; `2-core ceiling` = 2000 / (gateway + sandbox + client CPU per answer), the answers/s this "
        f"CPU cost allows if the run had both cores to itself (an upper bound: it assumes the cost per answer "
        f"stays as measured).")
    lines.append("")
    lines.append("| query | storage | gateway processes | clients | answers/s | p50 ms | p99 ms | refused | "
                 "gateway CPU | sandbox CPU | client CPU | cores used | 2-core ceiling | load |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for c in res["cells"]:
        total = c["cpu_ms_gateways"] + c["cpu_ms_sandbox"] + c["cpu_ms_clients"]
        lines.append(
            f"| `{c['query']}` | {c['storage']} | {c['gateways']} | {c['clients']} | {c['qps']:.1f} | {ms(c['p50'])} | "
            f"{ms(c['p99'])} | {c['refused']} | {c['cpu_ms_gateways']:.1f} | {c['cpu_ms_sandbox']:.1f} | "
            f"{c['cpu_ms_clients']:.1f} | {c['qps'] * total / 1000:.2f} | {2000 / total:.0f} | {c['load']} |")
    lines.append("")
    if any(c["storage"] == "postgres" for c in res["cells"]):
        lines.append("The PostgreSQL server's own CPU (its backend processes) is not in the CPU columns: `gateway CPU` "
                     "is the gateway processes' share only. Every rig has its own database; the SQLite and "
                     "PostgreSQL rigs ran at once and took turns per cell, so both saw the same machine load.")
        lines.append("")
    lines.append("Queries: `count` and `avg_by_region` repeat one plan per client, so from each client's second "
                 "call the sandbox answers from its exact-aggregate cache (fresh noise, same charge; **hits**); "
                 "`count_where` and `avg_by_region_where` put a different number in the WHERE clause every call, "
                 "so every call is a new plan that DuckDB runs (**misses**).")
    lines.append("")
    lines.append("Targets: `count` ≥ 400 answers/s and `avg_by_region` ≥ 150 answers/s at 32 clients; "
                 "throughput never falls as clients are added; p99 at 32 clients ≤ 150 ms; "
                 "single-client `count` p50 ≤ 6 ms (the same targets applied to the misses below).")
    for q, target in (("count", 400.0), ("avg_by_region", 150.0), ("count_where", 400.0),
                      ("avg_by_region_where", 150.0)):
        at32 = [c for c in res["cells"] if c["query"] == q and c["clients"] == 32]
        if at32:
            best = max(at32, key=lambda c: c["qps"])
            mark = "✅" if best["qps"] >= target else "❌"
            lines.append(f"* `{q}` at 32 clients: {best['qps']:.1f} answers/s with {best['gateways']} gateway "
                         f"process(es), p99 {ms(best['p99'])} ms {mark}")
    lines.append(SECTION_END)
    return "\n".join(lines) + "\n"


def splice(report: Path, section: str) -> None:
    """Replace the throughput section of `report` (or append it)."""
    text = report.read_text() if report.exists() else "# Benchmarks\n"
    if SECTION_START in text and SECTION_END in text:
        head, rest = text.split(SECTION_START, 1)
        tail = rest.split(SECTION_END, 1)[1].lstrip("\n")
        text = head + section + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    report.write_text(text)


def main(argv: list[str] | None = None) -> int:
    """Run the throughput table alone and write it into BENCHMARKS.md."""
    p = argparse.ArgumentParser(prog="python -m examples.bench.throughput", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--people", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--clients", default=",".join(map(str, CLIENT_COUNTS)))
    p.add_argument("--gateways", default="1,2")
    p.add_argument("--queries", default=",".join(DEFAULT_QUERIES), help=f"of {', '.join(QUERIES)}")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--storage-url", action="append", default=None,
                   help="the gateway's state store: `sqlite` or a PostgreSQL server's URL (each rig gets a fresh"
                        " database on it); repeat to measure stores side by side (default: sqlite)")
    p.add_argument("--profile-dir", type=Path, default=None,
                   help="write each gateway process's CPU per request stage (or cProfile statistics) here")
    p.add_argument("--profile-kind", choices=["stages", "cprofile"], default="stages",
                   help="stages: the gateway's stages on a CPU clock (cheap); cprofile: every function of the"
                        " gateway and sandbox processes (slows them about twofold)")
    p.add_argument("--state-base", type=Path, default=None,
                   help="where the rigs' state directories go (default: the system's temporary directory;"
                        " /dev/shm makes every fsync free, an upper bound on what batching commits can gain)")
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    data_dir, _ = ensure_data(args.people, args.seed)
    res = run_table(
        data_dir, gateways=tuple(int(x) for x in args.gateways.split(",")),
        clients=tuple(int(x) for x in args.clients.split(",")), queries=tuple(args.queries.split(",")),
        warmup_s=args.warmup, seconds=args.seconds, profile_dir=args.profile_dir,
        storage_urls=tuple(None if u == "sqlite" else u for u in args.storage_url or ["sqlite"]),
        state_base=args.state_base, profile=args.profile_kind)
    res["people"] = args.people
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    if args.out.name != "-":
        splice(args.out, render_throughput(res, args.people))
        log(f"wrote the throughput section of {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
