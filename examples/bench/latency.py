"""Latency, interleaved: every repetition runs every query on every system, in a rotating order, so machine
noise hits all of them alike."""

from __future__ import annotations

from typing import Any

from examples.bench.common import log, summary
from examples.bench.queries import WORKLOAD, Query
from examples.bench.systems import Outcome

__all__ = ["latency"]


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
