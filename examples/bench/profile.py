"""Where the gateway's time goes: its own functions wrapped with timers in this process (server-side
`GovernedPath.release`, analyzer, pricing, ledger calls, the sandbox client call, response building), and the
sandbox's DuckDB and OpenDP shares measured on the compiled plan in-process."""

from __future__ import annotations

import math
import re
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from examples.bench.common import log, ms, quantile
from examples.bench.queries import DATASET, EPSILON, Query
from examples.bench.systems import DuckDBSystem, GatewaySystem

__all__ = [
    "STAGE_ANALYZE",
    "STAGE_AUDIT",
    "STAGE_COMPLETE",
    "STAGE_PRICE",
    "STAGE_RESERVE",
    "StageTimer",
    "instrumented",
    "profile",
]


STAGE_ANALYZE = "analyzer (parse + plan; memoized)"
STAGE_PRICE = "OpenDP pricing (gateway)"
STAGE_RESERVE = "ledger reserve (nested budgets, BEGIN IMMEDIATE; fsync deferred to the completion)"
STAGE_COMPLETE = "ledger complete + release cache + outcome (one transaction, fsync)"
STAGE_AUDIT = "audit append (hash chain, fsync) + metrics"


class StageTimer:
    """Wraps callables in the gateway process and records how long each stage took per request."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, attr: str, stage: str) -> None:
        """Replace `owner.attr` by a timing wrapper (instance attribute or module attribute)."""
        original = getattr(owner, attr)
        had_own = isinstance(owner, type(sys)) or attr in getattr(owner, "__dict__", {})

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.times.setdefault(stage, []).append(time.perf_counter() - t0)

        setattr(owner, attr, timed)
        if had_own:
            self._undo.append(lambda: setattr(owner, attr, original))
        else:
            self._undo.append(lambda: delattr(owner, attr))

    def reset(self) -> None:
        """Forget recorded times."""
        self.times = {}

    def restore(self) -> None:
        """Undo every wrap."""
        for undo in reversed(self._undo):
            undo()
        self._undo = []


@contextmanager
def instrumented(gw: GatewaySystem) -> Iterator[StageTimer]:
    """Time the stages of the gateway's request path in this process."""
    from gateway.products.query import convert

    timer = StageTimer()
    core, path = gw.gw.core, gw.gw.path
    timer.wrap(path, "release", "server: GovernedPath.release")
    # Memoized (gateway/products/query/plancache.py): the analysis hits from the second request of a query on;
    # the pricing
    # misses, because every benchmark request asks for a slightly different epsilon (see `run`).
    timer.wrap(core.plans, "analyze", STAGE_ANALYZE)
    timer.wrap(core.plans, "price", STAGE_PRICE)
    # The governor's reserve checks every nested level in the ledger's one transaction.
    timer.wrap(path.governor, "reserve", STAGE_RESERVE)
    if path.oversight is not None:
        timer.wrap(path.oversight, "record_rpc", STAGE_AUDIT)
    if path.cache is not None:
        timer.wrap(path.cache, "get", "release cache lookup")
        timer.wrap(path.cache, "put", "release cache store (own file)")  # only if not in the ledger's file
    timer.wrap(path.ledger, "complete", STAGE_COMPLETE)
    timer.wrap(path.sandbox, "call", "sandbox round trip")
    timer.wrap(convert, "answer", "response building")
    timer.wrap(convert, "plan_info", "response building")
    try:
        yield timer
    finally:
        timer.restore()


def profile(gw: GatewaySystem, base: DuckDBSystem, reps: int, supported: list[Query]) -> dict[str, Any]:
    """Per-stage breakdown of gateway requests: client wall time split into gRPC+TLS, analyzer, pricing,
    ledger, sandbox (its DuckDB query and OpenDP noise measured separately here), response building."""
    from gateway.products.query.sql.analyze import analyze
    from sandbox.catalog import load_catalog
    from sandbox.engine.engine import stored_column
    from sandbox.engine.storage import compress, open_store, table_ref
    from sandbox.plans.compile import compile_plan
    from sandbox.plans.render import quote_ident
    from sandbox.pricing import mechanisms

    catalog = load_catalog(gw.catalog, base.data_dir)
    ds = catalog.dataset(DATASET)
    assert ds is not None
    info = gw.gw.core.catalog.dataset(DATASET)
    assert info is not None
    prepared: set[str] = set()
    out: dict[str, Any] = {}
    for q in supported:
        plan = analyze(q.sql, info)
        if plan.source is not None or plan.partition_selection:
            log(f"  profile {q.id}: skipped (the stage breakdown covers single-table, public-key plans)")
            continue
        spec = ds.table(plan.table)
        assert spec is not None
        sql_table = f"{DATASET}__{spec.name}"
        if sql_table not in prepared:  # stored as the sandbox stores it (truncation is a no-op on this data)
            if not prepared:
                open_store(base.con)
            cols = ", ".join(f"{stored_column(c)} AS {quote_ident(c.name)}" for c in spec.info.columns)
            base.con.execute(f"CREATE TABLE {table_ref(sql_table)} AS SELECT {cols} FROM {spec.name}")
            compress(base.con)
            prepared.add(sql_table)
        compiled = compile_plan(plan, spec.info, sql_table=sql_table, unit=ds.privacy_unit, max_cells=100_000,
                                stored=True)
        costs = mechanisms.price(plan, info, EPSILON)
        walls: list[float] = []
        for _ in range(2):
            gw.run(q)
        with instrumented(gw) as timer:
            for _ in range(reps):
                o = gw.run(q)
                assert o.seconds is not None
                walls.append(o.seconds)
            stages = {k: list(v) for k, v in timer.times.items()}
        duck: list[float] = []
        noise: list[float] = []
        for _ in range(reps):
            t0 = time.perf_counter()
            rows = base.con.execute(compiled.sql).fetchall()
            duck.append(time.perf_counter() - t0)
            n_keys = len(plan.group_by)
            width = len(compiled.components)
            exact = {tuple(r[:n_keys]): list(r[n_keys:]) for r in rows}
            t0 = time.perf_counter()
            for cost in costs:
                if (cost.aggregate_index, cost.component) not in compiled.components:
                    continue  # quantiles are released from bucket counts, not this vector
                j = compiled.components.index((cost.aggregate_index, cost.component))
                vec = [exact.get(cell, [0] * width)[j] or 0 for cell in compiled.cells]
                mechanisms.release_vector(cost, vec)
            noise.append(time.perf_counter() - t0)
        variants = sql_variants(base, q, compiled.sql, reps)
        med = {k: quantile(v, 0.5) for k, v in stages.items()}
        # "response building" is recorded twice per request (answer + plan_info): sum per request.
        if "response building" in stages:
            med["response building"] = quantile(stages["response building"], 0.5) * 2
        wall = quantile(walls, 0.5)
        server = med.get("server: GovernedPath.release", math.nan)
        sandbox_rt = med.get("sandbox round trip", math.nan)
        d_med, n_med = quantile(duck, 0.5), quantile(noise, 0.5)
        audit = med.get(STAGE_AUDIT, math.nan)
        breakdown = {
            "client wall time (median)": wall,
            "gRPC + mTLS + servicer (wall - server - audit)": wall - server - audit,
            STAGE_AUDIT: audit,
            STAGE_ANALYZE: med.get(STAGE_ANALYZE, math.nan),
            STAGE_PRICE: med.get(STAGE_PRICE, math.nan),
            STAGE_RESERVE: med.get(STAGE_RESERVE, math.nan),
            STAGE_COMPLETE: med.get(STAGE_COMPLETE, math.nan),
            "sandbox round trip": sandbox_rt,
            "  of which DuckDB (compiled plan, same tables, in-process)": d_med,
            "  of which OpenDP noise (release_vector)": n_med,
            "  of which socket, framing, sandbox Python (rest)": sandbox_rt - d_med - n_med,
            "response building": med.get("response building", math.nan),
        }
        out[q.id] = {"sql": q.sql, "compiled_sql": compiled.sql, "reps": reps, "stages_median_s": breakdown,
                     "sql_variants_median_s": variants}
        log(f"  profile {q.id}: wall {ms(wall)} ms, sandbox {ms(sandbox_rt)} ms, duckdb {ms(d_med)} ms")
    return out


_DOMAIN_FILTER = re.compile(r' WHERE \("[^"]+" IN \([^()]*\)\)')


def sql_variants(base: DuckDBSystem, q: Query, compiled_sql: str, reps: int) -> dict[str, float]:
    """What the sandbox's SQL costs next to the natural SQL on plain DuckDB's table, and without the
    public-domain IN filter (which the compiler adds so that no key outside its domain is ever counted)."""
    candidates = {
        "natural SQL, raw table (the plain DuckDB floor)": q.sql,
        "compiled plan as the sandbox runs it (its stored table)": compiled_sql,
        "compiled plan without the domain IN filter": _DOMAIN_FILTER.sub("", compiled_sql),
    }
    out = {}
    for label, sql in candidates.items():
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            base.con.execute(sql).fetchall()
            times.append(time.perf_counter() - t0)
        out[label] = quantile(times, 0.5)
    return out
