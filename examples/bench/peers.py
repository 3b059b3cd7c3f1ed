"""`python -m examples.bench.peers [--sizes 100000,1000000] [--reps 60]` (also run by `make bench`):
the gateway's accuracy side by side with OpenDP's Context API and SmartNoise SQL, at equal privacy loss.

Writes BENCHMARKS-accuracy.md (the table, machine facts, load average) and `.bench/accuracy-results.json`.

* Data: `gateway.exampledata.generate` at each size (the same cache as `examples.bench`).
* Systems, each on the same Parquet files, each query released `--reps` times (fresh noise every time):
  - `gateway`: real gRPC stubs over mTLS to a real gateway and sandbox process (`examples.bench.systems`),
    epsilon 1 per query, delta 1e-6 where keys are selected privately;
  - `OpenDP`: the Context API (`dp.Context.compositor`, one query's loss, margins for what is public, as
    OpenDP's documentation recommends) in its own venv (`.bench/venv-opendp`, `opendp[polars]==0.16.0`,
    which needs polars 1.36.1), in a worker subprocess (`examples/bench/opendp_worker.py`): the
    query is resolved to its measurement once and the measurement invoked per release;
  - `SmartNoise`: SmartNoise SQL in its own venv (`examples/bench/smartnoise_worker.py`). SmartNoise charges the
    requested epsilon to EVERY noisy column (an AVG is a sum and a count; a private-key query adds a key
    count), so it is run both at the requested epsilon and at epsilon / k, k its own reported cost at
    epsilon 1: the latter spends what the others spend.
* Error: median over releases and released cells of |noisy - truth| / |truth|, truth = the exact answer on
  the raw data. Next to each: the error the mechanism predicts from its own noise scales alone (closed form
  for counts and sums; 20,000 draws of the stated noise per cell for averages) and an approximate 95%
  interval of the measured median (order statistics).

The queries are `peer_cases.py`; the predicted errors, the verdict and the report `peers_report.py`.
`--cases sum_multi_row --reps 1000` measures one query closely (the SUM analysis in the report's notes).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
from privacy_gateway.v1 import common_pb2 as common_pb
from privacy_gateway.v1 import query_service_pb2 as q_pb

from examples.bench.common import BENCH_DIR, ensure_data, log
from examples.bench.peer_cases import CASES, DELTA, EPSILON, EXTRA, Case
from examples.bench.peers_report import ANALYSIS, median_interval, pct, predicted_avg, predicted_linear, render
from examples.bench.queries import Query
from examples.bench.systems import GatewaySystem, SmartNoiseSystem
from gateway.settings import ROOT
from sandbox.plans.compile import avg_centre

OD_VENV = BENCH_DIR / "venv-opendp"
OD_WORKER = Path(__file__).resolve().parent / "opendp_worker.py"
OD_REQUIREMENTS = ("opendp[polars]==0.16.0", "pyarrow")


# --------------------------------------------------------------------------------------------------
# OpenDP worker
# --------------------------------------------------------------------------------------------------


def ensure_opendp_venv() -> Path:
    """Create `.bench/venv-opendp` with opendp[polars] 0.16 (polars 1.36.1) on first use."""
    py = OD_VENV / "bin" / "python"
    stamp = OD_VENV / ".installed"
    if not stamp.exists():
        log(f"creating {OD_VENV} and installing {' '.join(OD_REQUIREMENTS)} (first run only) ...")
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", str(OD_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--progress-bar", "off", *OD_REQUIREMENTS],
                       check=True)
        stamp.touch()
    return py


class OpenDPSystem:
    """The OpenDP worker subprocess (its own venv)."""

    def __init__(self, data_dir: Path) -> None:
        self.proc = subprocess.Popen([str(ensure_opendp_venv()), str(OD_WORKER), str(data_dir)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        hello = self._call(None)
        self.versions: dict[str, str] = hello.get("versions", {})

    def _call(self, msg: dict[str, Any] | None) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if msg is not None:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the OpenDP worker exited")
        out: dict[str, Any] = json.loads(line)
        return out

    def prepare(self, case: Case) -> dict[str, Any]:
        """Resolve the case's measurement; OpenDP's summary and map."""
        return self._call({"op": "prepare", "id": case.id, "spec": case.opendp})

    def run(self, case: Case, reps: int) -> list[list[tuple[tuple[Any, ...], float]]]:
        """`reps` releases: per release, (keys, value of the case's aggregate) per released cell."""
        r = self._call({"op": "run", "id": case.id, "reps": reps})
        if not r["ok"]:
            raise RuntimeError(r["error"])
        col = len(r["columns"]) - 1  # the case's aggregate is the last column
        return [[(tuple(row[: case.keys]), float(row[col])) for row in rel] for rel in r["releases"]]

    def close(self) -> None:
        """Stop the worker."""
        try:
            self._call_quit()
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()

    def _call_quit(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


# --------------------------------------------------------------------------------------------------
# One size
# --------------------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One system on one case: errors, groups released, predicted error, what it charged."""

    errors: list[float] = field(default_factory=list)
    groups: list[int] = field(default_factory=list)
    predicted: float | None = None
    charged: str = ""
    unsupported: str | None = None

    def summary(self) -> dict[str, Any]:
        if self.unsupported is not None:
            return {"unsupported": self.unsupported}
        med, lo, hi = median_interval(self.errors)
        return {"median": med, "ci": [lo, hi], "predicted": self.predicted, "n": len(self.errors),
                "mean": sum(self.errors) / len(self.errors) if self.errors else None,
                "groups_median": sorted(self.groups)[len(self.groups) // 2] if self.groups else None,
                "charged": self.charged}


class Truth:
    """Exact answers on the raw data (plain DuckDB over the Parquet files)."""

    def __init__(self, data_dir: Path) -> None:
        self.con = duckdb.connect()
        for t in ("residents", "social_insurance", "regions"):
            path = str(data_dir / f"{t}.parquet").replace("'", "''")
            self.con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{path}')")

    def answer(self, sql: str, keys: int) -> dict[tuple[str, ...], float]:
        return {tuple(str(k) for k in r[:keys]): float(r[keys]) for r in self.con.execute(sql).fetchall()}

    def avg_cells(self, sql: str, keys: int, column: str) -> list[tuple[float, float]]:
        """(sum, count) per cell of an AVG query (the same grouping, SUM and COUNT of the column)."""
        s = sql.replace(f"AVG({column})", f"SUM({column}), COUNT({column})")
        return [(float(r[keys]), float(r[keys + 1])) for r in self.con.execute(s).fetchall()]

    def max_rows_per_person(self) -> int:
        row = self.con.execute("SELECT max(c) FROM (SELECT count(*) c FROM social_insurance GROUP BY person_id)")
        out = row.fetchone()
        return int(out[0]) if out else 0


def _errors(truth: dict[tuple[str, ...], float], rows: list[tuple[tuple[Any, ...], float]]) -> list[float]:
    out = []
    for key, v in rows:
        t = truth.get(tuple(str(k) for k in key))
        if t:
            out.append(abs(v - t) / abs(t))
    return out


def _column(case: Case) -> str:
    return "r.income" if "r.income" in case.gateway_sql else ("income" if case.table == "residents" else
                                                              "contribution")


def run_gateway(gw: GatewaySystem, case: Case, truth: Truth, reps: int) -> Cell:
    """`reps` releases through gRPC; the predicted error from ExplainQuery's noise scales."""
    cell = Cell()
    q = Query(case.id, case.title, case.gateway_sql, "accuracy", keys=case.keys, delta=case.delta)
    explain = gw.stubs["accuracy"].ExplainQuery(q_pb.ExplainQueryRequest(
        dataset="registry", sql=case.gateway_sql, purpose="benchmark",
        privacy_loss=common_pb.PrivacyLoss(epsilon=EPSILON, delta=case.delta)), timeout=60)
    rel = {r.component: r for r in explain.plan.releases}
    cell.charged = f"ε {explain.privacy_cost.epsilon:.6g}" + (
        f", δ {explain.privacy_cost.delta:.2g}" if explain.privacy_cost.delta else "")
    cell.charged += "; " + ", ".join(f"{r.component} {r.mechanism} scale {r.scale:.4g}"
                                     for r in explain.plan.releases)
    exact = truth.answer(case.gateway_sql, case.keys)
    if case.kind == "avg":
        assert case.bounds is not None
        centre = avg_centre(float(case.bounds[0]), float(case.bounds[1]), True)
        cells = truth.avg_cells(case.gateway_sql, case.keys, _column(case))
        cell.predicted = predicted_avg(cells, rel["sum"].scale, rel["count"].scale, centre, case.bounds)
    else:
        cell.predicted = predicted_linear(list(exact.values()), rel["sum" if case.kind == "sum" else "count"].scale)
    for _ in range(reps):
        out = gw.run(q, EPSILON, consumer="accuracy")
        if out.unsupported is not None:
            cell.unsupported = out.unsupported
            return cell
        cell.errors.extend(_errors(exact, [(k, v[0]) for k, v in out.rows]))
        cell.groups.append(len(out.rows))
    return cell


def run_opendp(od: OpenDPSystem, case: Case, truth: Truth, reps: int) -> Cell:
    """`reps` invocations of the resolved measurement; the predicted error from OpenDP's summary."""
    cell = Cell()
    if case.opendp is None:
        cell.unsupported = "not expressible"
        return cell
    prep = od.prepare(case)
    if not prep["ok"]:
        cell.unsupported = prep["error"]
        return cell
    summary = prep["summary"]
    eps, delta = prep["loss"]
    cell.charged = f"ε {eps:.6g}" + (f", δ {delta:.2g}" if delta else "") + "; " + ", ".join(
        f"{r['column']} {r['aggregate']} scale {r['scale']:.4g}" for r in summary)
    sql = case.peer_sql or case.gateway_sql
    exact = truth.answer(sql, case.keys)
    if case.kind == "avg":
        assert case.bounds is not None
        s_scale = next(r["scale"] for r in summary if r["aggregate"] == "Sum")
        n_scale = next(r["scale"] for r in summary if r["aggregate"] == "Length")
        cells = truth.avg_cells(sql, case.keys, _column(case).removeprefix("r."))
        cell.predicted = predicted_avg(cells, s_scale, n_scale, 0.0, None)
    else:
        cell.predicted = predicted_linear(list(exact.values()), float(summary[-1]["scale"]))
    for rel in od.run(case, reps):
        cell.errors.extend(_errors(exact, rel))
        cell.groups.append(len(rel))
    return cell


def run_smartnoise(sn: SmartNoiseSystem, case: Case, truth: Truth, reps: int, epsilon: float,
                   cache: bool, max_ids: int) -> Cell:
    """`reps` releases at `epsilon`; the predicted error from SmartNoise's documented noise: every noisy
    column at the full epsilon, discrete Laplace at scale max_ids (U - L) / epsilon for a sum, max_ids /
    epsilon for a count (snsql's `Mechanisms` defaults and `_compute_noise_scale`)."""
    cell = Cell()
    assert case.peer_sql is not None
    q = Query(case.id, case.title, case.peer_sql, "accuracy", keys=case.keys, delta=case.delta,
              sn_public_keys=not case.private_keys)
    cost = sn.call(q, epsilon, cache=cache, cost=True)
    if not cost["ok"]:
        cell.unsupported = cost["error"]
        return cell
    cell.charged = f"ε {cost['cost'][0]:.6g}, δ {cost['cost'][1]:.2g} (its own accounting)"
    exact = truth.answer(case.peer_sql, case.keys)
    width = (case.bounds[1] - case.bounds[0]) if case.bounds else 1
    if case.kind == "avg":
        cells = truth.avg_cells(case.peer_sql, case.keys, _column(case).removeprefix("r."))
        cell.predicted = predicted_avg(cells, max_ids * width / epsilon, max_ids / epsilon, 0.0, None)
    else:
        cell.predicted = predicted_linear(list(exact.values()), max_ids * width / epsilon)
    for _ in range(reps):
        out = sn.run(q, epsilon, cache=cache)
        if out.unsupported is not None:
            cell.unsupported = out.unsupported
            return cell
        cell.errors.extend(_errors(exact, [(k, v[0]) for k, v in out.rows]))
        cell.groups.append(len(out.rows))
    return cell


def run_size(size: int, args: argparse.Namespace, versions: dict[str, dict[str, str]],
             out: dict[str, Any], checkpoint: Callable[[], None]) -> None:
    """Every case on every system at one size, into `out`; `checkpoint` after each case (a long run that is
    stopped keeps the cells it measured)."""
    data_dir, data_info = ensure_data(size, args.seed)
    truth = Truth(data_dir)
    max_ids = truth.max_rows_per_person()
    root = Path(tempfile.mkdtemp(prefix="pgw-acc-"))  # fresh state: no charge-once cache hits across runs
    out.update({"data": data_info, "cases": {}})
    gw = GatewaySystem(data_dir, root / "gw", args.threads)
    od = OpenDPSystem(data_dir) if not args.no_opendp else None
    sn = SmartNoiseSystem(data_dir, args.threads) if not args.no_smartnoise else None
    if od is not None:
        versions["opendp_env"] = od.versions
    if sn is not None:
        versions["smartnoise_env"] = sn.versions
    try:
        for case in (*CASES, *EXTRA):
            if args.case_list and case.id not in args.case_list:
                continue
            log(f"  {size:,} {case.id} ...")
            res: dict[str, Any] = {"gateway": run_gateway(gw, case, truth, args.reps).summary()}
            if od is not None and case.opendp is not None:
                res["opendp"] = run_opendp(od, case, truth, args.reps).summary()
            if sn is not None and case.peer_sql is not None:
                ids = 12 if case.table == "social_insurance" else 1
                cache = max_ids <= 12  # SmartNoise's per-person sampling is a no-op: its exact SQL may be memoised
                same = run_smartnoise(sn, case, truth, args.reps, EPSILON, cache, ids)
                res["smartnoise_same_epsilon"] = same.summary()
                if same.unsupported is None:
                    cost = sn.call(Query(case.id, "", case.peer_sql, "", keys=case.keys, delta=case.delta,
                                         sn_public_keys=not case.private_keys), EPSILON, cache=cache, cost=True)
                    k = float(cost["cost"][0]) / EPSILON
                    res["smartnoise"] = run_smartnoise(sn, case, truth, args.reps, EPSILON / k, cache, ids).summary()
                    res["smartnoise"]["factor"] = k
            out["cases"][case.id] = res
            checkpoint()
            log("    " + ", ".join(f"{name} {pct(r.get('median'))}" for name, r in res.items()))
    finally:
        if sn is not None:
            sn.close()
        if od is not None:
            od.close()
        gw.close()
        truth.con.close()
        shutil.rmtree(root, ignore_errors=True)


def machine_facts() -> dict[str, Any]:
    """Cores, CPU, versions, date, commit, load average at the end."""
    import importlib.metadata as md

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                            check=False).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True, check=False).stdout.strip())
    return {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "cores": os.cpu_count(), "cpu": cpu,
            "python": platform.python_version(), "git_commit": commit + ("-dirty" if dirty else ""),
            "versions": {p: md.version(p) for p in ("duckdb", "opendp", "grpcio")},
            "load_average_end": round(os.getloadavg()[0], 2)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(prog="python -m examples.bench.peers", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="100000,1000000", help="comma-separated numbers of people")
    p.add_argument("--reps", type=int, default=60, help="releases per query and system (at least 50)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="smoke run: 100k people, 5 releases")
    p.add_argument("--no-opendp", action="store_true")
    p.add_argument("--no-smartnoise", action="store_true")
    p.add_argument("--render", type=Path, nargs="+", default=None, metavar="JSON",
                   help="measure nothing: write the report from these results files (their sizes merged)")
    p.add_argument("--cases", default="", help="comma-separated case ids (default: every case)")
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS-accuracy.md")
    p.add_argument("--json", type=Path, default=BENCH_DIR / "accuracy-results.json")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.reps = "100000", 5
    args.case_list = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = set(args.case_list) - {c.id for c in (*CASES, *EXTRA)}
    if unknown:
        p.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    args.size_list = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]
    return args


def write(args: argparse.Namespace, results: dict[str, Any], versions: dict[str, dict[str, str]],
          load_start: float, t0: float) -> None:
    """The JSON and the report as measured so far."""
    results["machine"] = {**machine_facts(), **versions, "load_average_start": load_start}
    results["analysis"] = ANALYSIS
    results["total_seconds"] = time.perf_counter() - t0
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1, default=str))
    args.out.write_text(render(results))


def main(argv: list[str] | None = None) -> int:
    """Run every size and write the report."""
    args = parse_args(argv)
    if args.render:
        merged: dict[str, Any] = {}
        for path in args.render:
            part = json.loads(path.read_text())
            sizes = merged.get("sizes", {})
            for size, sres in part["sizes"].items():  # one size measured in parts: the cases merged
                prev = sizes.get(size, {})
                sizes[size] = {**prev, **sres, "cases": {**prev.get("cases", {}), **sres.get("cases", {})}}
            loads = [*merged.get("machine", {}).get("load_averages", []),
                     (part["machine"]["load_average_start"], part["machine"]["load_average_end"])]
            merged = {**part, "sizes": sizes, "machine": {**part["machine"], "load_averages": loads},
                      "command": " and ".join(filter(None, (merged.get("command"), part["command"])))}
        args.out.write_text(render(merged))
        log(f"wrote {args.out} from {len(args.render)} results file(s)")
        return 0
    t0 = time.perf_counter()
    load_start = round(os.getloadavg()[0], 2)
    command = "python -m examples.bench.peers" + (f" {' '.join(sys.argv[1:])}" if argv is None and
                                                      sys.argv[1:] else "")
    versions: dict[str, dict[str, str]] = {}
    results: dict[str, Any] = {"command": command, "config": {"sizes": args.size_list, "reps": args.reps,
                                                              "seed": args.seed, "epsilon": EPSILON,
                                                              "delta": DELTA}, "sizes": {}}
    for size in args.size_list:
        log(f"== accuracy at {size:,} people")
        results["sizes"][str(size)] = {}
        run_size(size, args, versions, results["sizes"][str(size)], lambda: write(args, results, versions, load_start,
                                                                                   t0))
    write(args, results, versions, load_start, t0)
    log(f"wrote {args.out} and {args.json} in {results['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
