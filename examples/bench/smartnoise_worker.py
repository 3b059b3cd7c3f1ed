"""SmartNoise SQL worker for `make bench` (`examples/bench/systems.py`); runs in its OWN virtual environment.

smartnoise-sql pins opendp<0.15 and pandas<3, so it cannot share the project's venv. The benchmark starts
this file with `.bench/venv-smartnoise/bin/python` and talks to it with one JSON object per line:

    stdin : {"op": "run", "sql": ..., "epsilon": 1.0, "delta": 1e-6, "public_keys": false, "cache": false}
    stdout: {"ok": true, "seconds": 0.41, "columns": [...], "rows": [[...]], "cost": [eps, delta]}
            {"ok": false, "error": "ValueError: ..."}

It imports nothing from the project (only snsql and duckdb). The data are loaded once into in-memory DuckDB
tables from the same Parquet files the gateway reads; SmartNoise talks to DuckDB through its Postgres
reader and a small connection wrapper, because:

* its pandas reader copies the data into SQLite (minutes at 1M rows, out of memory at 10M);
* DuckDB 2.x refuses the `ROW_NUMBER() OVER (PARTITION BY id ORDER BY RANDOM())` SmartNoise generates for
  its per-person reservoir sampling ("ORDER BY window expressions cannot be volatile"): the wrapper
  computes `random()` in the innermost subquery and orders by that column instead (same semantics).

`cache: true` (accuracy runs only) memoises the exact SQL result per SQL text, so each repetition pays
only for SmartNoise's noise. That is exact here only because its sampling is a no-op on this data (no
person exceeds `max_ids` rows); the benchmark checks that before it asks for caching.
"""

from __future__ import annotations

import json
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import duckdb  # type: ignore[import-not-found, unused-ignore]
import snsql  # type: ignore[import-not-found, unused-ignore]

_RANDOM_ORDER = re.compile(r"ORDER BY RANDOM \( \)", re.IGNORECASE)
_INNER_SELECT = re.compile(r"\) AS row_num FROM \( SELECT ", re.IGNORECASE)


def rewrite(sql: str) -> str:
    """Move SmartNoise's volatile window ordering into a column of the innermost subquery."""
    if not _RANDOM_ORDER.search(sql):
        return sql
    sql = _RANDOM_ORDER.sub("ORDER BY __sn_rnd", sql)
    return _INNER_SELECT.sub(") AS row_num FROM ( SELECT random() AS __sn_rnd, ", sql, count=1)


class _Cursor:
    def __init__(self, owner: _Connection) -> None:
        self._owner = owner
        self.description: Any = None
        self._rows: list[tuple[Any, ...]] = []

    def execute(self, sql: str) -> None:
        sql = rewrite(sql)
        cached = self._owner.cache.get(sql) if self._owner.use_cache else None
        if cached is None:
            cur = self._owner.con.cursor()
            try:
                res = cur.execute(sql)
                cached = (res.description, res.fetchall())
            finally:
                cur.close()
            if self._owner.use_cache:
                self._owner.cache[sql] = cached
        self.description, self._rows = cached

    def __iter__(self) -> Any:
        return iter(self._rows)


class _Connection:
    """Just enough of a DB-API connection for snsql's PostgresReader."""

    def __init__(self, con: Any) -> None:
        self.con = con
        self.use_cache = False
        self.cache: dict[str, Any] = {}

    def cursor(self) -> _Cursor:
        return _Cursor(self)

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass


def metadata(rows: dict[str, int], public_keys: bool) -> dict[str, Any]:
    """The equivalent of the gateway's catalog: bounds, max_ids 1 / 12, person_id as the private id.

    `public_keys` turns off SmartNoise's key censoring (`censor_dims`), its way of being told that the
    grouping keys are public: no budget is then spent on thresholding the groups.
    """
    common = {"row_privacy": False, "censor_dims": not public_keys, "clamp_counts": False,
              "clamp_columns": True, "sample_max_ids": True, "use_dpsu": False}
    return {
        "Collection": {
            "public": {
                "residents": {
                    **common, "max_ids": 1, "rows": rows["residents"],
                    "person_id": {"type": "int", "private_id": True},
                    "id_number": {"type": "string"},
                    "name": {"type": "string"},
                    "birth_year": {"type": "int", "lower": 1930, "upper": 2007},
                    "sex": {"type": "string"},
                    "region": {"type": "string"},
                    "income": {"type": "int", "lower": 0, "upper": 2_000_000},
                    "employed": {"type": "boolean"},
                },
                "social_insurance": {
                    **common, "max_ids": 12, "rows": rows["social_insurance"],
                    "person_id": {"type": "int", "private_id": True},
                    "month": {"type": "string"},
                    "contribution": {"type": "int", "lower": 0, "upper": 10_000},
                    "employer_credit_code": {"type": "string"},
                    "region": {"type": "string"},
                },
            }
        }
    }


def _plain(v: Any) -> Any:
    if isinstance(v, int | float | str | bool) or v is None:
        return v
    try:
        return float(v)
    except (TypeError, ValueError):
        return str(v)


def main() -> int:
    data_dir = Path(sys.argv[1])
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    t0 = time.perf_counter()
    con = duckdb.connect(config={"threads": threads})
    rows: dict[str, int] = {}
    for table in ("residents", "social_insurance"):
        path = str(data_dir / f"{table}.parquet").replace("'", "''")
        con.execute(f"CREATE TABLE {table} AS SELECT * FROM read_parquet('{path}')")
        rows[table] = int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    wrapper = _Connection(con)
    readers: dict[tuple[float, float, bool], Any] = {}
    versions = {"snsql": getattr(snsql, "__version__", "?"), "duckdb": duckdb.__version__}
    try:
        import importlib.metadata as md

        versions["smartnoise-sql"] = md.version("smartnoise-sql")
        versions["opendp"] = md.version("opendp")
        versions["pandas"] = md.version("pandas")
    except Exception:  # pragma: no cover - informational only
        pass
    print(json.dumps({"ready": True, "load_seconds": time.perf_counter() - t0, "versions": versions}),
          flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        if msg.get("op") == "quit":
            break
        key = (float(msg["epsilon"]), float(msg.get("delta", 0.0)), bool(msg.get("public_keys", False)))
        try:
            reader = readers.get(key)
            if reader is None:
                reader = snsql.from_connection(
                    wrapper, engine="postgres", metadata=metadata(rows, key[2]),
                    privacy=snsql.Privacy(epsilon=key[0], delta=key[1]),
                )
                readers[key] = reader
            wrapper.use_cache = bool(msg.get("cache", False))
            start = time.perf_counter()
            result = reader.execute(msg["sql"])
            seconds = time.perf_counter() - start
            cost = None
            if msg.get("cost"):
                cost = [float(x) for x in reader.get_privacy_cost(msg["sql"])]
            out = {"ok": True, "seconds": seconds, "columns": [str(c) for c in result[0]],
                   "rows": [[_plain(v) for v in r] for r in result[1:]], "cost": cost}
        except Exception as exc:
            out = {"ok": False, "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
                   "trace": traceback.format_exc(limit=3)[-600:]}
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
