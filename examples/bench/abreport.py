"""The before/after throughput section of BENCHMARKS.md from `examples.bench.experiments` runs of the variants
`baseline` (another commit's tree) and `base` (this tree), one JSON file per query:

    python -m examples.bench.abreport /tmp/ab-count.json /tmp/ab-count_where.json ... [--out BENCHMARKS.md]

For each query: answers/s, latency and CPU per answer of both at every client count, measured side by side
(the two rigs ran at once and took turns per cell, rotating which went first), with the 1-minute load average
at the start of each window; then, per stage, CPU and wall milliseconds per answer at 1 and 32 clients.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from examples.bench.common import ms
from examples.bench.cpustages import GATEWAY_STAGES, SANDBOX_STAGES
from gateway.settings import ROOT

__all__ = ["main", "render_ab"]

SECTION_START = "<!-- throughput-ab:start -->"
SECTION_END = "<!-- throughput-ab:end -->"
LABELS = {"baseline": "before", "base": "after"}


def _cpu(c: dict[str, Any]) -> float:
    return float(c["cpu_ms_gateways"] + c["cpu_ms_sandbox"] + c["cpu_ms_clients"])


def _stage_rows(stages: dict[str, Any], clients: str) -> list[str]:
    by = stages.get(clients, {})
    before, after = by.get("baseline"), by.get("base")
    if not before or not after:
        return []
    lines = [f"Per stage at {clients} client(s), ms per answer, CPU / wall (before: {int(before['releases'])} "
             f"answers, after: {int(after['releases'])}):", "",
             "| process | stage | before CPU | before wall | after CPU | after wall |", "|---|---|---:|---:|---:|---:|"]
    for part, order in (("gateway", GATEWAY_STAGES), ("sandbox", SANDBOX_STAGES)):
        names = [k for k in order if k in after[part] or k in before[part]]
        for k in names:
            b = before[part].get(k, (float("nan"), float("nan"), 0))
            a = after[part].get(k, (float("nan"), float("nan"), 0))
            name = k.replace("|", "/")
            indent = len(name) - len(name.lstrip(" "))
            lines.append(f"| {part} | {'&nbsp;' * indent}{name.strip()} | {b[0]:.2f} | {b[1]:.2f} | {a[0]:.2f} | "
                         f"{a[1]:.2f} |")
        tb, ta = sum(before[f"{part}_threads"].values()), sum(after[f"{part}_threads"].values())
        lines.append(f"| {part} | **whole process, every thread (/proc)** | **{tb:.2f}** | | **{ta:.2f}** | |")
    lines.append("")
    return lines


def render_ab(runs: list[dict[str, Any]], note: str = "") -> str:
    """The section's Markdown, between its markers (`note`: Markdown put after the figures)."""
    lines = [SECTION_START, "## Throughput before and after, side by side (1,000,000 people, one gateway process)", ""]
    loads = [c["load"] for r in runs for c in r["cells"]]
    lines.append(
        "`python -m examples.bench.experiments --variants baseline,base --baseline DIR --query Q --clients "
        "1,8,32,64` for each query, then `python -m examples.bench.abreport`. `before` = the gateway of the "
        "commit before this work (its sandbox without the exact-aggregate cache); `after` = this tree. Both rigs "
        "(one sandbox, one gateway process, SQLite state in /tmp) ran at once and took turns per cell, rotating "
        "which went first, so both saw the same machine; the closed-loop clients ran on the same 2 cores. "
        f"The machine was shared with four other engineers' work: 1-minute load average {min(loads)} to "
        f"{max(loads)} at the start of the windows (`load` column), so absolute answers/s are a fraction of "
        "what an idle machine gives; compare the two columns of one row, and the CPU per answer. "
        "`ceiling` = 2000 / CPU ms per answer (gateway + sandbox + clients): the answers/s both cores could "
        "give at that cost.")
    lines.append("")
    seen: dict[str, int] = {}
    for r in runs:
        cells = r["cells"]
        query = cells[0]["query"]
        seen[query] = seen.get(query, 0) + 1
        run_loads = [c["load"] for c in cells]
        again = f", run {seen[query]} (load {min(run_loads)} to {max(run_loads)})" if seen[query] > 1 else ""
        lines.append(f"### `{query}`{again}")
        lines.append("")
        lines.append("| clients | before answers/s | after answers/s | before p50 / p99 ms | after p50 / p99 ms | "
                     "before CPU ms gw + sb + cl | after CPU ms gw + sb + cl | before ceiling | after ceiling | "
                     "load |")
        lines.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for clients in sorted({c["clients"] for c in cells}):
            pair = {c["variant"]: c for c in cells if c["clients"] == clients}
            b, a = pair.get("baseline"), pair.get("base")
            if b is None or a is None:
                continue
            lines.append(
                f"| {clients} | {b['qps']:.1f} | **{a['qps']:.1f}** | {ms(b['p50'])} / {ms(b['p99'])} | "
                f"{ms(a['p50'])} / {ms(a['p99'])} | {b['cpu_ms_gateways']:.1f} + {b['cpu_ms_sandbox']:.1f} + "
                f"{b['cpu_ms_clients']:.1f} | {a['cpu_ms_gateways']:.1f} + {a['cpu_ms_sandbox']:.1f} + "
                f"{a['cpu_ms_clients']:.1f} | {2000 / _cpu(b):.0f} | {2000 / _cpu(a):.0f} | "
                f"{b['load']} / {a['load']} |")
        lines.append("")
        for clients in ("1", "32"):
            lines += _stage_rows(r.get("stages", {}), clients)
    if note:
        lines += [note.strip(), ""]
    lines.append(SECTION_END)
    return "\n".join(lines) + "\n"


def splice(report: Path, section: str) -> None:
    """Replace the section in `report`, or put it before the throughput table (or at the end)."""
    text = report.read_text()
    if SECTION_START in text and SECTION_END in text:
        head, rest = text.split(SECTION_START, 1)
        text = head + section + rest.split(SECTION_END, 1)[1].lstrip("\n")
    elif "<!-- throughput:start -->" in text:
        head, rest = text.split("<!-- throughput:start -->", 1)
        text = head + section + "\n<!-- throughput:start -->" + rest
    else:
        text = text.rstrip("\n") + "\n\n" + section
    report.write_text(text)


def main(argv: list[str] | None = None) -> int:
    """Render the runs given and splice them into the report."""
    p = argparse.ArgumentParser(prog="python -m examples.bench.abreport", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="`experiments --json` files, one per query")
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--note", type=Path, default=None, help="Markdown to put after the figures (the analysis)")
    args = p.parse_args(argv)
    section = render_ab([json.loads(f.read_text()) for f in args.runs],
                        args.note.read_text() if args.note else "")
    if args.out.name == "-":
        print(section)
    else:
        splice(args.out, section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
