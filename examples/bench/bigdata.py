"""Out-of-memory benchmark: the sandbox with `--storage disk` against plain DuckDB on the same file.

`python -m examples.bench.bigdata --people 100000000 --memory-limit 512MiB` (or `make bench-big
PEOPLE=100000000`): generates a synthetic registry straight from DuckDB SQL (hash-derived values, no Python
rows, so 100M people take minutes, not hours), starts the real sandbox process on it with the given memory
limit (the store is built once and cached under `.bench/big/<people>/state`), then runs three queries many
times, interleaved with plain DuckDB opening the sandbox's own store file read-only under the same memory
limit and thread count:

* COUNT(*) over people,
* AVG(income) grouped by region (31 regions, public domain),
* SUM(amount) over payments (the multi-row table: 1-4 rows per person, at most 4 kept).

The sandbox's time is the full plan round trip over its Unix socket (pricing, the cap-free engine path,
guarded SQL, OpenDP noise); plain DuckDB runs the equivalent SQL on the clamped stored columns. Medians
and load averages are appended to BENCHMARKS.md as a section (replaced on each run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import duckdb

from examples.bench.common import BENCH_DIR, log
from gateway.products.query.sql.analyze import analyze
from gateway.settings import ROOT
from sandbox.client import SandboxProcess
from sandbox.protocol.messages import ErrorReply, ExecuteRequest, ExecuteResult

REGIONS = 31
CATALOG = """
schema = "privacy_gateway.catalog.v1"
data_dir = "."

[datasets.big]
privacy_unit = "person_id"

[datasets.big.tables.people]
file = "people.parquet"
max_rows_per_unit = 1

[datasets.big.tables.people.columns]
person_id  = {{ type = "int64", grade = "identifier" }}
region     = {{ type = "string", grade = "public", domain = [{regions}] }}
birth_year = {{ type = "int64", grade = "public", lower = 1930, upper = 2007 }}
income     = {{ type = "int64", grade = "sensitive", lower = 0, upper = 1000000 }}

[datasets.big.tables.payments]
file = "payments.parquet"
max_rows_per_unit = 4

[datasets.big.tables.payments.columns]
person_id = {{ type = "int64", grade = "identifier" }}
month     = {{ type = "int64", grade = "public", lower = 1, upper = 12 }}
amount    = {{ type = "int64", grade = "sensitive", lower = 0, upper = 10000 }}
"""

QUERIES = {
    "count": ("SELECT COUNT(*) FROM people",
              'SELECT count(*) FROM pgw_store.main."big__people"'),
    "avg_by_region": ("SELECT region, AVG(income) FROM people GROUP BY region",
                      'SELECT region, avg(income) FROM pgw_store.main."big__people" GROUP BY region'),
    "sum_payments": ("SELECT SUM(amount) FROM payments",
                     'SELECT sum(amount) FROM pgw_store.main."big__payments"'),
}


def region_names() -> list[str]:
    """The public domain of `region`."""
    return [f"r{i:02d}" for i in range(REGIONS)]


def generate(out: Path, people: int, seed: int) -> dict[str, Any]:
    """Write people.parquet, payments.parquet and catalog.toml into `out` (cached by a marker file)."""
    marker = out / ".complete.json"
    if marker.exists():
        return dict(json.loads(marker.read_text()))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    con = duckdb.connect(config={"temp_directory": str(out / ".tmp"), "preserve_insertion_order": False})
    regions = "[" + ", ".join(f"'{r}'" for r in region_names()) + "]"
    con.execute(f"""COPY (
        SELECT i AS person_id,
               {regions}[1 + (hash(i, {seed}, 1) % {REGIONS})::INTEGER] AS region,
               (1930 + hash(i, {seed}, 2) % 78)::INTEGER AS birth_year,
               (hash(i, {seed}, 3) % 200000)::INTEGER AS income
        FROM range({people}) t(i)) TO '{out / "people.parquet"}' (FORMAT parquet, ROW_GROUP_SIZE 1000000)""")
    con.execute(f"""COPY (
        SELECT i AS person_id, (1 + (hash(i, {seed}, 5) + j * 5) % 12)::INTEGER AS month,
               (hash(i, j, {seed}, 6) % 5000)::INTEGER AS amount
        FROM range({people}) t(i), range(4) u(j)
        WHERE j <= hash(i, {seed}, 4) % 4) TO '{out / "payments.parquet"}' (FORMAT parquet, ROW_GROUP_SIZE 1000000)""")
    rows = {name: int(con.execute(f"SELECT count(*) FROM '{out / name}.parquet'").fetchone()[0])  # type: ignore[index]
            for name in ("people", "payments")}
    con.close()
    shutil.rmtree(out / ".tmp", ignore_errors=True)
    (out / "catalog.toml").write_text(CATALOG.format(regions=", ".join(f'"{r}"' for r in region_names())))
    info = {"people": people, "seed": seed, "rows": rows, "seconds": round(time.perf_counter() - t0, 1),
            "bytes": sum((out / f"{n}.parquet").stat().st_size for n in rows)}
    marker.write_text(json.dumps(info))
    return info


def _size_bytes(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*(MiB|GiB|MB|GB)", text)
    if not m:
        raise ValueError(f"memory limit {text!r}: use e.g. 512MiB or 2GiB")
    return int(m.group(1)) * {"MiB": 2**20, "GiB": 2**30, "MB": 10**6, "GB": 10**9}[m.group(2)]


def run(people: int, memory_limit: str, reps: int, warmup: int, threads: int, seed: int) -> dict[str, Any]:
    """Generate (or reuse) the data, start the sandbox on it, and time both systems interleaved."""
    base = BENCH_DIR / "big" / str(people)
    data = base / f"seed{seed}"
    load0 = os.getloadavg()
    gen = generate(data, people, seed)
    log(f"data: {gen}")
    state = base / "state"
    state.mkdir(parents=True, exist_ok=True)
    sock = Path(f"/tmp/pgw-big-{os.getpid()}.sock")
    args = ["--state-dir", str(state), "--storage", "disk", "--memory-limit", memory_limit,
            "--threads", str(threads), "--query-timeout-ms", "600000", "--address-space-bytes", "0"]
    built = not any((state / "tables").glob("*.json"))
    t0 = time.perf_counter()
    proc = SandboxProcess.start(data / "catalog.toml", sock, extra_args=args, ready_timeout_s=6 * 3600)
    start_s = time.perf_counter() - t0
    record = state / "build.json"  # the build's cost, kept for the report of later runs that reuse the store
    if built:
        record.write_text(json.dumps({"build_s": round(start_s, 1), "load": os.getloadavg()[0]}))
    first_build = json.loads(record.read_text()) if record.exists() else None
    try:
        (store,) = (state / "tables").glob("*.duckdb")
        store_bytes = store.stat().st_size
        log(f"sandbox ready in {start_s:.1f} s; store {store_bytes / 2**30:.2f} GiB, memory limit {memory_limit}")
        client = proc.client(timeout_s=900)
        info = client.describe().dataset("big")
        assert info is not None
        plain = duckdb.connect(":memory:", config={"memory_limit": memory_limit, "threads": threads})
        plain.execute(f"ATTACH '{store}' AS pgw_store (READ_ONLY)")
        times: dict[str, dict[str, list[float]]] = {q: {"sandbox": [], "duckdb": []} for q in QUERIES}
        answers: dict[str, Any] = {}
        n = 0
        for rep in range(warmup + reps):
            for name, (sql, plain_sql) in QUERIES.items():
                plan = analyze(sql, info)
                n += 1
                t = time.perf_counter()
                reply = client.execute(ExecuteRequest(f"big-{os.getpid()}-{n}", plan, epsilon=1.0))
                ts = time.perf_counter() - t
                if isinstance(reply, ErrorReply) or not isinstance(reply, ExecuteResult):
                    raise RuntimeError(f"sandbox refused {name}: {reply}")
                t = time.perf_counter()
                exact = plain.execute(plain_sql).fetchall()
                td = time.perf_counter() - t
                if rep >= warmup:
                    times[name]["sandbox"].append(ts)
                    times[name]["duckdb"].append(td)
                answers[name] = {"noisy_first": reply.rows[0].values[0].value, "exact_first": exact[0][-1]}
        plain.close()
    finally:
        proc.stop()
        sock.unlink(missing_ok=True)
    t0 = time.perf_counter()  # a restart reuses the store: hash the sources, verify its SHA-256, attach
    SandboxProcess.start(data / "catalog.toml", sock, extra_args=args, ready_timeout_s=3600).stop()
    restart_s = time.perf_counter() - t0
    sock.unlink(missing_ok=True)
    return {
        "built": built, "restart_s": round(restart_s, 1), "first_build": first_build,
        "people": people, "rows": gen["rows"], "parquet_bytes": gen["bytes"], "generate_s": gen["seconds"],
        "store_bytes": store_bytes, "memory_limit": memory_limit,
        "memory_fraction": _size_bytes(memory_limit) / store_bytes, "start_s": round(start_s, 1),
        "threads": threads, "reps": reps, "warmup": warmup,
        "median_ms": {q: {s: round(statistics.median(v) * 1000, 1) for s, v in d.items()} for q, d in times.items()},
        "answers": answers, "load_before": [round(x, 2) for x in load0],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }


BIG_HEADING = "## Data beyond memory: the on-disk store against plain DuckDB"


def section(text: str, heading: str) -> str:
    """The `## ` section of markdown `text` that starts with `heading` (to the next `## `), or ''."""
    at = text.find(heading)
    if at < 0:
        return ""
    nxt = text.find("\n## ", at + len(heading))
    return text[at:] if nxt < 0 else text[at : nxt + 1]


def render(r: dict[str, Any], command: str) -> str:
    """The BENCHMARKS.md section for one run."""
    lines = [
        BIG_HEADING,
        "",
        f"Command: `{command}`. {r['people']:,} people ({r['rows']['payments']:,} payment rows), "
        f"Parquet {r['parquet_bytes'] / 2**30:.2f} GiB (generated in {r['generate_s']} s), "
        f"sandbox store file {r['store_bytes'] / 2**30:.2f} GiB; DuckDB memory limit **{r['memory_limit']}** "
        f"for both systems ({r['memory_fraction']:.0%} of the store), {r['threads']} threads. "
        + (f"First start (builds the store: reads the Parquet, truncates, clamps, writes, fsyncs, hashes): "
           f"{r['start_s']} s; " if r["built"] else f"Start (store already built): {r['start_s']} s; ")
        + (f"the store's build took {r['first_build']['build_s']} s (load {r['first_build']['load']:.1f}); "
           if not r["built"] and r.get("first_build") else "")
        + f"a restart that reuses the store (hashes the sources, verifies the store's SHA-256, attaches): "
        f"{r['restart_s']} s. "
        f"Median of {r['reps']} interleaved runs after {r['warmup']} warm-up rounds; load average "
        f"{r['load_before'][0]} before, {r['load_after'][0]} after (2 cores, shared).",
        "",
        "| query | sandbox (plan round trip, noised) | plain DuckDB (same file, exact) | ratio |",
        "|---|---:|---:|---:|",
    ]
    for q, m in r["median_ms"].items():
        ratio = m["sandbox"] / m["duckdb"] if m["duckdb"] else float("nan")
        lines.append(f"| {QUERIES[q][0]} | {m['sandbox']} ms | {m['duckdb']} ms | {ratio:.2f}x |")
    lines += ["", "Plain DuckDB opens the sandbox's own store file read-only: the same clamped, truncated columns.",
              ""]
    return "\n".join(lines)


def write_section(text: str, path: Path) -> None:
    """Replace (or append) the section in BENCHMARKS.md."""
    old = path.read_text() if path.exists() else ""
    current = section(old, BIG_HEADING)
    old = old.replace(current, "") if current else old
    path.write_text(old.rstrip("\n") + "\n\n" + text)


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    p = argparse.ArgumentParser(prog="python -m examples.bench.bigdata", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--people", type=int, default=100_000_000)
    p.add_argument("--memory-limit", default="512MiB", help="DuckDB memory limit of both systems")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--generate-only", action="store_true", help="only generate (and time) the data")
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    a = p.parse_args(argv)
    if a.generate_only:
        info = generate(BENCH_DIR / "big" / str(a.people) / f"seed{a.seed}", a.people, a.seed)
        log(f"generated: {info}")
        return 0
    r = run(a.people, a.memory_limit, a.reps, a.warmup, a.threads, a.seed)
    log(json.dumps(r))
    command = (f"python -m examples.bench.bigdata --people {a.people} --memory-limit {a.memory_limit} "
               f"--reps {a.reps}")
    write_section(render(r, command), a.out)
    (BENCH_DIR / "big" / f"result-{a.people}.json").write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
