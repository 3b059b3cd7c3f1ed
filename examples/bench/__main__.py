"""`make bench`: the command (flags below); what it measures is the package's docstring (`examples/bench/`)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import examples.bench as bench
from examples.bench.abreport import SECTION_END as AB_END
from examples.bench.abreport import SECTION_START as AB_START
from examples.bench.accuracy import accuracy, selection_head_to_head
from examples.bench.bigdata import BIG_HEADING, section
from examples.bench.common import BENCH_DIR, ensure_data, log
from examples.bench.floor import FloorSystem
from examples.bench.latency import latency
from examples.bench.ledger import ledger_group, ledger_history
from examples.bench.profile import profile
from examples.bench.queries import DELTA, EPSILON, SN_TARGET_SIZE, WORKLOAD
from examples.bench.report import machine_facts, render
from examples.bench.systems import DuckDBSystem, SmartNoiseSystem, income_upper, start_gateway_system
from examples.bench.throughput import render_throughput, run_table
from gateway.settings import ROOT


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags."""
    p = argparse.ArgumentParser(prog="python -m examples.bench", description=bench.__doc__,
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
    p.add_argument("--throughput-people", type=int, default=None,
                   help="people for the throughput table (default 1,000,000; quick: the smallest size)")
    p.add_argument("--throughput-clients", default=None,
                   help="client processes per cell of the throughput table (default 1,8,32,64; quick 1,4; 0: skip)")
    p.add_argument("--throughput-gateways", default="1,2", help="gateway processes per throughput rig")
    p.add_argument("--throughput-seconds", type=float, default=None, help="measured seconds per cell (default 8)")
    p.add_argument("--storage-url", default=None, help="the gateway's state store for the throughput table "
                                                       "(default: SQLite in the rig's state directory)")
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
    args.throughput_people = args.throughput_people or (min(args.size_list) if args.quick else 1_000_000)
    args.throughput_clients = args.throughput_clients or ("1,4" if args.quick else "1,8,32,64")
    args.throughput_seconds = args.throughput_seconds or (2.0 if args.quick else 8.0)
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
                led["history"] = ledger_history(BENCH_DIR / "ledger-history")
                results["ledger"] = led
        finally:
            if sn is not None:
                sn.close()
            floor.close()
            base.close()
            gw.close()
            shutil.rmtree(root, ignore_errors=True)
    clients = tuple(int(c) for c in args.throughput_clients.split(",") if int(c) > 0)
    if clients:
        log(f"== throughput, {args.throughput_people:,} people, clients {clients} ...")
        thru_dir, _ = ensure_data(args.throughput_people, args.seed)
        results["throughput"] = run_table(
            thru_dir, gateways=tuple(int(g) for g in args.throughput_gateways.split(",")), clients=clients,
            warmup_s=min(3.0, args.throughput_seconds), seconds=args.throughput_seconds, threads=args.threads,
            storage_url=args.storage_url)
        results["throughput"]["people"] = args.throughput_people
    results["machine"] = {**machine_facts(sn_versions), "load_average_start": load_start}
    results["total_seconds"] = time.perf_counter() - t_start
    args.json.write_text(json.dumps(results, indent=1, default=str))
    report = render(results)
    if "throughput" in results:
        report = report.rstrip("\n") + "\n\n" + render_throughput(results["throughput"],
                                                                   results["throughput"]["people"])
    # The out-of-memory section (`examples.bench.bigdata`, run separately: `make bench-big`) and the before/after
    # throughput section (`examples.bench.abreport`, run against another commit's tree) are kept.
    old = args.out.read_text() if args.out.exists() else ""
    kept = section(old, BIG_HEADING) if old else ""
    if AB_START in old and AB_END in old:
        kept = AB_START + old.split(AB_START, 1)[1].split(AB_END, 1)[0] + AB_END + "\n" + (f"\n{kept}" if kept else "")
    args.out.write_text(report + (f"\n{kept}" if kept else ""))
    log(f"wrote {args.out} and {args.json} in {results['total_seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

