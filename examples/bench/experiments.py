"""Throughput experiments side by side (`python -m examples.bench.experiments`): rigs that differ in one lever
run at once and every client count is measured on each in turn (`throughput.ab`); every gateway process
records its CPU per request stage (`cpustages.py`), printed per answer at the end.

Variants: `base` (one gateway process, as shipped); `workers2` (two gateway processes on the port);
`pool64` (the gateway keeps up to 64 idle sandbox connections instead of 8, so that more than 8 requests in
flight do not open a connection and a sandbox thread each); `tmpfs` (the state directory in /dev/shm, where
fsync costs nothing: the most that batching commits, group commit, could gain); `run2`/`run4`/`run8` (at most
2/4/8 calls run at once, `max_workers`; the rest wait in admission's queue on the event loop); `nogate`/`gate2`/
`gate4`/`gate8` (`max_executing` 64/2/4/8 instead of four per core: how many calls' work runs on worker threads
at once);
`nocache` (the sandbox keeps no exact aggregates: every request runs DuckDB).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from examples.bench.common import ensure_data, log
from examples.bench.throughput import ab

__all__ = ["VARIANTS", "log_stage_table", "main", "stage_table"]

VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "workers2": {"gateways": 2},
    "pool64": {"gw_args": ["--sandbox-pool", "64"]},
    "tmpfs": {"state_base": Path("/dev/shm")},
    "run2": {"settings": {"max_workers": 2}},
    "run4": {"settings": {"max_workers": 4}},
    "run8": {"settings": {"max_workers": 8}},
    "nogate": {"settings": {"max_executing": 64}},
    "gate2": {"settings": {"max_executing": 2}},
    "gate4": {"settings": {"max_executing": 4}},
    "gate8": {"settings": {"max_executing": 8}},
    "nocache": {"sandbox_args": ["--exact-cache-values", "0"]},
}
# `--baseline DIR` adds the variant `baseline`: the gateway processes run from DIR (a copy of another commit's
# tree, e.g. `git archive main | tar -x -C DIR`), everything else as `base`.


def _merged(files: list[Path]) -> dict[str, dict[str, float]]:
    """The `cpustages` JSON files of one variant summed: {"cpu"|"wall"|"calls"|"threads": {stage: total}}."""
    out: dict[str, dict[str, float]] = {"cpu": {}, "wall": {}, "calls": {}, "threads": {}}
    for f in files:
        data = json.loads(f.read_text())
        for part, totals in out.items():
            for k, v in data.get(part, {}).items():
                totals[k] = totals.get(k, 0.0) + v
    return out


def stage_table(profile_dir: Path, clients: int | None = None) -> dict[str, dict[str, Any]]:
    """Milliseconds per answer (one GovernedPath.release), per stage, CPU and wall, for each variant's gateway
    processes and its sandbox, with the CPU of each thread group of the processes: in the measured window of
    the cell with `clients` clients (its last round), or over the processes' whole life (None)."""
    prefix = "" if clients is None else f"c{clients}."
    out: dict[str, dict[str, Any]] = {}
    for vdir in sorted(p for p in profile_dir.iterdir() if p.is_dir()):
        gw = _merged(list(vdir.glob(f"{prefix}gateway*.stages.json")))
        releases = next((n for k, n in gw["calls"].items() if "GovernedPath.release" in k), 0)
        if not releases:
            continue
        sb = _merged(list(vdir.glob(f"{prefix}sandbox.stages.json")))
        per = 1000 / releases
        out[vdir.name] = {
            "releases": releases,
            "gateway": {k: (gw["cpu"][k] * per, gw["wall"].get(k, 0.0) * per, gw["calls"].get(k, 0) / releases)
                        for k in gw["cpu"]},
            "gateway_threads": {k: v * per for k, v in sorted(gw["threads"].items(), key=lambda kv: -kv[1])},
            "sandbox": {k: (sb["cpu"][k] * per, sb["wall"].get(k, 0.0) * per, sb["calls"].get(k, 0) / releases)
                        for k in sb["cpu"]},
            "sandbox_threads": {k: v * per for k, v in sorted(sb["threads"].items(), key=lambda kv: -kv[1])},
        }
    return out


def log_stage_table(stages: dict[str, dict[str, Any]]) -> None:
    """Print `stage_table`'s figures."""
    for name, st in stages.items():
        log(f"{name}: ms per answer by stage ({int(st['releases'])} answers; CPU / wall / calls per answer)")
        for part in ("gateway", "sandbox"):
            log(f"  {part}:")
            for k, (cpu, wall, calls) in st[part].items():
                log(f"    {cpu:7.3f} {wall:8.3f} {calls:5.2f}  {k}")
            log(f"  {part} threads (CPU ms per answer):")
            for k, v in st[f"{part}_threads"].items():
                if v >= 0.01:
                    log(f"    {v:7.3f}  {k}")


def main(argv: list[str] | None = None) -> int:
    """Run the chosen variants side by side and print the per-stage CPU."""
    p = argparse.ArgumentParser(prog="python -m examples.bench.experiments", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--query", default="count")
    p.add_argument("--clients", default="8,32")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--people", type=int, default=1_000_000)
    p.add_argument("--baseline", type=Path, default=None, help="a copy of the tree to run as variant `baseline`")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    data_dir, _ = ensure_data(args.people, 7)
    profile_dir = Path(tempfile.mkdtemp(prefix="pgw-stages-"))
    variants = {}
    known = dict(VARIANTS)
    if args.baseline is not None:
        # the sandbox runs from this tree: without its exact-aggregate cache it computes as the baseline did
        known["baseline"] = {"code_dir": args.baseline.resolve(), "sandbox_args": ["--exact-cache-values", "0"]}
    for name in args.variants.split(","):
        v = dict(known[name])
        v["profile_dir"] = profile_dir / name
        v["profile_dir"].mkdir()
        variants[name] = v
    cells = ab(data_dir, variants, args.query, tuple(int(c) for c in args.clients.split(",")),
               args.warmup, args.seconds, args.rounds)
    stages = {}
    for c in args.clients.split(","):
        log(f"== {c} clients")
        stages[c] = stage_table(profile_dir, int(c))
        log_stage_table(stages[c])
    if args.json:
        args.json.write_text(json.dumps({"cells": cells, "stages": stages}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
