"""What every part of the benchmark shares: where its files live, progress lines, quantiles and the number
formats of the report, and the cached example data."""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from gateway.exampledata.generate import generate
from gateway.settings import ROOT

__all__ = ["BENCH_DIR", "CATALOG", "ensure_data", "fmt_ratio", "log", "ms", "pct", "quantile", "ratio", "summary"]

BENCH_DIR = ROOT / ".bench"
CATALOG = ROOT / "policies" / "catalog.toml"


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
