"""OpenDP Context API worker for `examples/bench/peers.py`; runs in its OWN virtual environment.

`opendp[polars]` 0.16 needs polars==1.36.1 exactly, and the project's venv has polars 2.x, so the benchmark
starts this file with `.bench/venv-opendp/bin/python` and talks to it with one JSON object per line:

    stdin : {"op": "prepare", "id": "avg", "spec": {...}}   -> {"ok": true, "summary": [...], "seconds": 3.4}
            {"op": "run", "id": "avg", "reps": 50}           -> {"ok": true, "columns": [...],
                                                                 "releases": [[[key..., value...], ...], ...]}
            {"op": "quit"}

`prepare` builds the query the way OpenDP's documentation recommends (`dp.Context.compositor` with the
privacy unit and loss of ONE query, margins for what is public) and resolves it to its measurement once
(calibrating costs about 1-15 s); `run` invokes that measurement `reps` times on the data, each a fresh
release at the query's full loss (as `reps` separate contexts would). The summary is OpenDP's own
(`summarize`: column, aggregate, distribution, scale, threshold).

spec: {"table": "residents" | "social_insurance", "contributions": 1 | 12, "epsilon": 1.0, "delta": 0.0,
       "group_by": null | "region", "public_keys": bool, "public_length": bool,
       "aggs": [{"kind": "len" | "sum" | "mean", "column": "income", "bounds": [0, 2000000]}]}

It imports nothing from the project.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import opendp.prelude as dp  # type: ignore[import-not-found, unused-ignore]
import polars as pl  # type: ignore[import-not-found, unused-ignore]

warnings.filterwarnings("ignore")  # dp.len()'s FutureWarning about `signed`
dp.enable_features("contrib")


def _expr(agg: dict[str, Any]) -> Any:
    if agg["kind"] == "len":
        return dp.len()
    lo, hi = agg["bounds"]
    col = pl.col(agg["column"]).fill_null(0)
    if agg["kind"] == "sum":
        return col.dp.sum((lo, hi))
    return col.dp.mean((lo, hi))


def _measurement(frames: dict[str, Any], sizes: dict[str, int], spec: dict[str, Any]) -> tuple[Any, Any]:
    table = spec["table"]
    lf = frames[table]
    n = sizes[table]
    margins = [dp.polars.Margin(by=[], max_length=n if spec.get("public_length") else 10 * n,
                                invariant="lengths" if spec.get("public_length") else None)]
    if spec.get("group_by") and spec.get("public_keys"):
        margins.append(dp.polars.Margin(by=[spec["group_by"]], invariant="keys", max_length=10 * n))
    loss = dp.loss_of(epsilon=spec["epsilon"], delta=spec["delta"]) if spec["delta"] > 0 else \
        dp.loss_of(epsilon=spec["epsilon"])
    ctx = dp.Context.compositor(data=lf, privacy_unit=dp.unit_of(contributions=spec["contributions"]),
                                privacy_loss=loss, split_evenly_over=1, margins=margins)
    exprs = [_expr(a) for a in spec["aggs"]]
    q = ctx.query()
    q = q.group_by(spec["group_by"]).agg(*exprs) if spec.get("group_by") else q.select(*exprs)
    return q, q.resolve()


def _plain(v: Any) -> Any:
    if isinstance(v, int | float | str | bool) or v is None:
        return v
    return float(v)


def main() -> int:
    data_dir = Path(sys.argv[1])
    t0 = time.perf_counter()
    frames = {
        "residents": pl.read_parquet(data_dir / "residents.parquet", columns=["region", "income"]).lazy(),
        "social_insurance": pl.read_parquet(data_dir / "social_insurance.parquet", columns=["contribution"]).lazy(),
    }
    sizes = {k: int(v.select(pl.len()).collect().item()) for k, v in frames.items()}
    import importlib.metadata as md

    versions = {"opendp": md.version("opendp"), "polars": md.version("polars")}
    print(json.dumps({"ready": True, "load_seconds": time.perf_counter() - t0, "versions": versions}), flush=True)
    prepared: dict[str, tuple[Any, Any, dict[str, Any]]] = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        if msg.get("op") == "quit":
            break
        try:
            if msg["op"] == "prepare":
                start = time.perf_counter()
                q, m = _measurement(frames, sizes, msg["spec"])
                summary = q.summarize(alpha=0.05)
                prepared[msg["id"]] = (q, m, msg["spec"])
                loss = m.map(msg["spec"]["contributions"])
                out = {"ok": True, "seconds": time.perf_counter() - start,
                       "summary": [{k: _plain(v) for k, v in row.items()} for row in summary.to_dicts()],
                       "loss": list(loss) if isinstance(loss, tuple) else [loss, 0.0]}
            else:
                _, m, spec = prepared[msg["id"]]
                lf = frames[spec["table"]]
                start = time.perf_counter()
                releases = []
                columns: list[str] = []
                for _ in range(int(msg["reps"])):
                    df = m(lf).collect()
                    columns = list(df.columns)
                    releases.append([[_plain(v) for v in r] for r in df.rows()])
                out = {"ok": True, "seconds": time.perf_counter() - start, "columns": columns, "releases": releases}
        except Exception as exc:
            out = {"ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
                   "trace": traceback.format_exc(limit=3)[-600:]}
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
