"""Throughput experiments side by side (`python -m examples.bench.experiments`): rigs that differ in one lever
run at once and every client count is measured on each in turn (`throughput.ab`); every gateway process
records its CPU per request stage (`cpustages.py`), printed per answer at the end.

Variants: `base` (one gateway process, as shipped); `workers2` (two gateway processes on the port);
`pool64` (the gateway keeps up to 64 idle sandbox connections instead of 8, so that more than 8 requests in
flight do not open a connection and a sandbox thread each); `tmpfs` (the state directory in /dev/shm, where
fsync costs nothing: the most that batching commits, group commit, could gain).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from examples.bench.common import ensure_data, log
from examples.bench.throughput import ab

__all__ = ["VARIANTS", "main", "stage_table"]

VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "workers2": {"gateways": 2},
    "pool64": {"gw_args": ["--sandbox-pool", "64"]},
    "tmpfs": {"state_base": Path("/dev/shm")},
}
# `--baseline DIR` adds the variant `baseline`: the gateway processes run from DIR (a copy of another commit's
# tree, e.g. `git archive main | tar -x -C DIR`), everything else as `base`.


def stage_table(profile_dir: Path) -> dict[str, dict[str, float]]:
    """CPU milliseconds per GovernedPath.release, per stage, for each variant's gateway processes."""
    out: dict[str, dict[str, float]] = {}
    for vdir in sorted(p for p in profile_dir.iterdir() if p.is_dir()):
        cpu: dict[str, float] = {}
        calls: dict[str, int] = {}
        for f in vdir.glob("gateway*.stages.json"):
            data = json.loads(f.read_text())
            for k, v in data["cpu"].items():
                cpu[k] = cpu.get(k, 0.0) + v
            for k, v in data["calls"].items():
                calls[k] = calls.get(k, 0) + v
        releases = next((n for k, n in calls.items() if k.startswith("GovernedPath.release")), 0)
        if releases:
            out[vdir.name] = {k: v / releases * 1000 for k, v in cpu.items()}
            out[vdir.name]["releases"] = releases
    return out


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
        known["baseline"] = {"code_dir": args.baseline.resolve()}
    for name in args.variants.split(","):
        v = dict(known[name])
        v["profile_dir"] = profile_dir / name
        v["profile_dir"].mkdir()
        variants[name] = v
    cells = ab(data_dir, variants, args.query, tuple(int(c) for c in args.clients.split(",")),
               args.warmup, args.seconds, args.rounds)
    stages = stage_table(profile_dir)
    for name, st in stages.items():
        log(f"{name}: CPU ms per answer by stage ({int(st.pop('releases'))} answers)")
        for k, v in st.items():
            log(f"    {v:6.3f}  {k}")
    if args.json:
        args.json.write_text(json.dumps({"cells": cells, "stages": stages}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
