"""The sandbox engine: loads the owner's files, locks DuckDB, answers plans with noisy values only.

Privacy: every release goes through `sandbox.pricing.mechanisms` with a cost the sandbox computes from its
own catalog. Each unit keeps at most K rows per table (chosen once at load by a hash of the row under
a secret salt drawn at start-up, independently per unit), every aggregated value is clamped to the
bounds `sandbox.plans.bounds` derives for it, and group
keys come only from declared domains (or from OpenDP's threshold mechanism under partition
selection), so the L1 sensitivity of every released vector is what
`mechanisms` assumes.

The data owner's word: every release is charged on the owner's cap (`sandbox.engine.caps`, counted by
`sandbox.pricing.cap_rules` from the sandbox's own pricing, never from numbers the gateway reports) before any data
is touched, and `reload` swaps in the owner's new caps, grades and verification caps without a restart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import secrets
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import duckdb
from msgspec.structs import replace

from sandbox.catalog import Catalog, DatasetSpec, TableSpec, load_catalog
from sandbox.engine.caps import CAP_MESSAGE, DUPLICATE_MESSAGE, CapLedger, Product
from sandbox.engine.disk_store import prepare_store, store_key, store_paths
from sandbox.engine.duckdb_config import connect, lock_down, verify_locked
from sandbox.engine.exact_cache import ExactCache
from sandbox.engine.guard import check_select
from sandbox.engine.keys import keyed_digest
from sandbox.engine.limits import Limits
from sandbox.engine.release import release_rows
from sandbox.engine.storage import DerivedTable, attach_store, compress, open_store, sql_table_name, table_ref
from sandbox.engine.watchdog import Watchdog
from sandbox.errors import CAP_LIFETIME_MESSAGE, INCOMPATIBLE_PREFIX, STORAGE_MESSAGE, ConfigError, PlanRejectedError
from sandbox.plans.compile import CompiledPlan, compile_dataset_plan
from sandbox.plans.grades import check_plan_grades
from sandbox.plans.relation import Relation, plan_relation
from sandbox.plans.render import quote_ident, render_literal
from sandbox.pricing import mechanisms, zcdp
from sandbox.pricing.cap_rules import ReleaseLoss, counts, refusal
from sandbox.protocol.messages import (
    CatalogInfo,
    ColumnInfo,
    DatasetInfo,
    ErrorReply,
    ExecuteRequest,
    ExecuteResult,
    ReleaseCost,
    ReleaseRow,
    plan_to_json,
)
from sandbox.protocol.owner import RELOAD_REFUSED_PREFIX, CapUsage, CapUsageReply

log = logging.getLogger("sandbox.engine.engine")

# DuckDB source types accepted for each catalog type (converted losslessly at load).
_ACCEPT = {
    "int64": ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER"),
    "float64": ("FLOAT", "DOUBLE", "DECIMAL"),
    "string": ("VARCHAR",),
    "bool": ("BOOLEAN",),
}
_SQL_TYPE = {"int64": "BIGINT", "float64": "DOUBLE", "string": "VARCHAR", "bool": "BOOLEAN"}


_PRICE_MEMO = 256  # plans whose sandbox pricing is remembered (see Engine._price_memoized)


def data_version(ds: DatasetSpec, key: bytes) -> str:
    """The public data version: 16 hex digits of HMAC-SHA256(key, SHA-256 over the dataset's files).

    Stable while the files are unchanged (the gateway's charge-once cache and receipts rely on it) and
    different when they change. Keyed with the sandbox's secret (sandbox/engine/keys.py) because an unkeyed hash
    of the files would be a deterministic function of the private data released with every answer: someone
    who knows every other record could confirm a guess about one person's record against it.
    """
    return data_digests(ds, key)[0]


def data_digests(ds: DatasetSpec, key: bytes) -> tuple[str, dict[str, bytes]]:
    """`data_version(ds, key)` and the SHA-256 of each table's file (by table key), in one read of the files."""
    h = hashlib.sha256()
    per_table: dict[str, bytes] = {}
    for t in sorted(ds.tables, key=lambda t: t.name):
        h.update(f"{t.name}\x00{t.file.name}\x00".encode())
        own = hashlib.sha256()
        with t.file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
                own.update(chunk)
        h.update(b"\x00")
        per_table[t.key] = own.digest()
    return keyed_digest(key, h.digest())[:16], per_table


def _narrow_int(lo: int, hi: int) -> str:
    """The narrowest DuckDB integer type holding a clamped column, and every difference of two values.

    A bounded integer column is stored in SMALLINT or INTEGER when its clamped values (and x - y for
    any two of them, as AVG's centred sum computes `x - c` in the column's type) fit: scans read a
    half or a quarter of the bytes (10M incomes: SUM 7.6 -> 5.8 ms). Sums still come back exact
    (DuckDB sums INTEGER into HUGEINT), and arithmetic in expressions runs in DOUBLE
    (`sandbox.plans.compile`), so no query can overflow the narrower type.
    """
    for name, bits in (("SMALLINT", 16), ("INTEGER", 32)):
        top = 2 ** (bits - 1) - 1
        if -top <= lo and hi <= top and hi - lo <= top:
            return name
    return "BIGINT"


def stored_column(c: ColumnInfo) -> str:
    """How a column is stored at load: cast to its type, clamped to its declared bounds, NaN as NULL.

    Clamping once per data version (instead of in every query) is the same per-row function the queries
    applied, so sensitivities are unchanged; it makes the stored values exactly what `sandbox.plans.bounds`
    describes, so the compiler can aggregate a bare column without re-clamping it (5-10x faster on 10M
    rows). Filters therefore see clamped values too: a value beyond a bound reads as the bound.
    """
    q = quote_ident(c.name)
    if c.type == "int64" and c.lower is not None and c.upper is not None:
        lo, hi = math.ceil(c.lower), math.floor(c.upper)
        clamped = (f"(CASE WHEN {q} IS NULL THEN NULL ELSE least(greatest(CAST({q} AS BIGINT), "
                   f"CAST({lo} AS BIGINT)), CAST({hi} AS BIGINT)) END)")
        return f"CAST({clamped} AS {_narrow_int(lo, hi)})"
    if c.type == "float64":
        v = f"CAST({q} AS DOUBLE)"
        if c.lower is not None and c.upper is not None:
            lo_s, hi_s = render_literal(float(c.lower)), render_literal(float(c.upper))
            return (f"(CASE WHEN {v} IS NULL OR isnan({v}) THEN NULL "
                    f"ELSE least(greatest({v}, {lo_s}), {hi_s}) END)")
        return f"(CASE WHEN isnan({v}) THEN NULL ELSE {v} END)"
    return f"CAST({q} AS {_SQL_TYPE[c.type]})"


class Engine:
    """Owns the locked DuckDB connection and answers `ExecuteRequest`s."""

    def __init__(
        self, catalog: Catalog, limits: Limits | None = None, caps: CapLedger | None = None,
        *, truncation_salt: str | None = None, version_key: bytes | None = None, store_dir: Path | None = None,
        derived: Sequence[DerivedTable] = (),
    ) -> None:
        """Load every table of `catalog`, truncate, validate types, then lock down.

        With `store_dir` the tables live in an on-disk store there (`sandbox.engine.disk_store`: built
        once per data version, attached read-only), together with the `derived` tables (the verification
        templates' tables), built after the loaded ones with no query deadline (a load is not a query);
        without it, in memory, and `derived` is not built here (`derived_tables` is then empty).

        Raises:
            ConfigError: a file is missing or unreadable, its columns do not match the catalog, or the
                on-disk store cannot be built.
            LockDownError: DuckDB did not reach the locked state.
        """
        self.limits = limits or Limits()
        self.caps = caps  # the data owner's cap ledger (None: caps not enforced here, embedded use)
        self._view = (catalog, CatalogInfo(()))  # replaced below, once the data versions are known
        self._reload_lock = threading.Lock()
        self._con = connect(self.limits)
        self._watchdog = Watchdog()  # interrupts statements past their deadline (one thread)
        self._prices: OrderedDict[tuple[str, ...], tuple[tuple[ReleaseCost, ...], ReleaseLoss]] = OrderedDict()
        self._price_lock = threading.Lock()
        self.exact = ExactCache(self.limits.exact_cache_values)  # exact rows of recent plans, re-noised per request
        # Without a persisted key (tests, embedded use) the version is stable for this process only.
        version_key = version_key or secrets.token_bytes(32)
        self.row_counts: dict[str, int] = {}
        versions: dict[str, str] = {}
        digests: dict[str, bytes] = {}
        for ds in catalog.datasets:
            for t in ds.tables:
                if not t.file.is_file():
                    raise ConfigError(str(catalog.path), f"{t.key}.file", f"no such file: {t.file}")
            versions[ds.name], own = data_digests(ds, version_key)
            digests.update(own)
        # The truncation salt must not depend on the data: a salt derived from the files (as it once was)
        # changes when one unit is added, which re-chooses the rows every OTHER unit keeps and breaks the
        # neighbouring-dataset argument. A fresh secret (per dataset) is independent of the data; it is
        # drawn once, so the truncation is fixed for the process's lifetime (for an on-disk store: for
        # the store's lifetime, one data version).
        salts = {ds.name: truncation_salt or secrets.token_hex(16) for ds in catalog.datasets}

        def load(con: duckdb.DuckDBPyConnection) -> None:
            started = time.monotonic()
            for ds in catalog.datasets:
                for t in ds.tables:
                    self._load(con, ds, t, salts[ds.name])
            log.info("loaded the tables in %.1f s", time.monotonic() - started)

        def load_with_derived(con: duckdb.DuckDBPyConnection) -> None:
            load(con)
            started = time.monotonic()
            for d in derived:
                con.execute(f"CREATE TABLE {table_ref(d.name)} AS {d.select}")
            if derived:
                log.info("built %d derived tables (verification templates) in %.1f s", len(derived),
                         time.monotonic() - started)

        attached: tuple[str, ...] = ()
        if store_dir is None:
            open_store(self._con)  # tables are loaded into the compressed store (sandbox.engine.storage)
            load(self._con)
            compress(self._con)
        else:
            key = store_key(catalog, digests, version_key, truncation_salt, derived)
            prepared = prepare_store(store_dir, key, self.limits, load_with_derived)
            attach_store(self._con, str(prepared.path))
            attached = store_paths(prepared.path)
            self.row_counts = self._stored_counts(catalog)
            for d in derived:  # a store without them would fail every check later: refuse it now
                try:
                    self._con.execute(f"SELECT 1 FROM {table_ref(d.name)} LIMIT 0")
                except duckdb.CatalogException as exc:
                    raise ConfigError(str(prepared.path), d.name, "the on-disk store lacks this table") from exc
        # The derived tables the store holds (the verifier finds them there instead of building them).
        self.derived_tables = frozenset(d.name for d in derived) if store_dir is not None else frozenset[str]()
        self.storage = "memory" if store_dir is None else "disk"
        lock_down(self._con, self.limits, attached)
        self._attached = attached
        self.locked_down = True
        self._versions = versions
        # The catalog and its public description, swapped together by `reload` (one tuple: a request reads
        # both from the same version). The public description carries the cell limit the gateway compiles
        # against.
        self._view = (catalog, self._public(catalog))
        self._tables = frozenset(self.row_counts)

    def _public(self, catalog: Catalog) -> CatalogInfo:
        """The public description of `catalog` at the loaded data versions, with the cell limit."""
        return replace(catalog.public(self._versions), max_cells=self.limits.max_groups)

    @property
    def catalog(self) -> Catalog:
        """The catalog in force (the owner's settings as last loaded or reloaded)."""
        return self._view[0]

    @property
    def _info(self) -> CatalogInfo:
        return self._view[1]

    def _source(self, t: TableSpec) -> str:
        path = render_literal(str(t.file))
        if t.file.suffix.lower() == ".parquet":
            return f"read_parquet({path})"
        types = ", ".join(
            f"{render_literal(c.name)}: {render_literal(_SQL_TYPE[c.type])}" for c in t.info.columns
        )
        return f"read_csv({path}, header = true, types = {{{types}}})"

    def _stored_counts(self, catalog: Catalog) -> dict[str, int]:
        """The row count of every table of `catalog` in the attached store (a missing table raises)."""
        out: dict[str, int] = {}
        for ds in catalog.datasets:
            for t in ds.tables:
                name = sql_table_name(ds.name, t.name)
                row = self._con.execute(f"SELECT count(*) FROM {table_ref(name)}").fetchone()
                out[name] = int(row[0]) if row else 0
        return out

    def _load(self, con: duckdb.DuckDBPyConnection, ds: DatasetSpec, t: TableSpec, salt: str) -> None:
        """Load one table into the store attached to `con` (the engine's own, or an on-disk build's)."""
        src = self._source(t)
        cfile = str(self.catalog.path)
        try:
            described = con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()
            found = {r[0]: r[1] for r in described}
        except duckdb.Error as exc:
            raise ConfigError(cfile, f"{t.key}.file", f"cannot read {t.file}: {exc}") from exc
        for c in t.info.columns:
            if c.name not in found:
                raise ConfigError(cfile, f"{t.key}.columns.{c.name}", f"not a column of {t.file}")
            src_type = str(found[c.name]).split("(")[0]
            if src_type not in _ACCEPT[c.type]:
                raise ConfigError(
                    cfile,
                    f"{t.key}.columns.{c.name}.type",
                    f"declared {c.type} but {t.file} has {found[c.name]}",
                )
        cols = ", ".join(f"{stored_column(c)} AS {quote_ident(c.name)}" for c in t.info.columns)
        row = ", ".join(quote_ident(c.name) for c in t.info.columns)
        unit = quote_ident(ds.privacy_unit)
        name = sql_table_name(ds.name, t.name)
        if t.info.public:
            self._load_public(con, t, name, cols, src)
            return
        k = t.info.max_rows_per_unit
        # Per-unit truncation: keep the K rows of each unit with the smallest salted row hash. The
        # choice for one unit depends only on its own rows and the data-independent secret salt, so
        # adding or removing a unit changes no other unit's rows (stability).
        # Fast path: when no unit has more than K rows, truncation is the identity, and the window over
        # every row (about 12 GiB for 50M rows) is skipped; the result is the same table either way.
        over = con.execute(
            f"SELECT count(*) FROM (SELECT {unit} FROM {src} GROUP BY {unit} HAVING count(*) > {k})"
        ).fetchone()
        if over is not None and int(over[0]) == 0:
            con.execute(f"CREATE TABLE {table_ref(name)} AS SELECT {cols} FROM {src}")
        else:
            con.execute(
                f"CREATE TABLE {table_ref(name)} AS SELECT {cols} FROM ("
                f"SELECT *, row_number() OVER (PARTITION BY {unit} ORDER BY __pgw_h) AS __pgw_rn FROM ("
                f"SELECT *, hash({render_literal(salt)}, {row}) AS __pgw_h FROM {src})"
                f") WHERE __pgw_rn <= {k}"
            )
        count = con.execute(f"SELECT count(*) FROM {table_ref(name)}").fetchone()
        self.row_counts[name] = int(count[0]) if count else 0
        # Its row count is exact information about private data: it stays in this process.
        log.info("loaded %s.%s, at most %d rows per unit", ds.name, t.name, k)

    def _load_public(self, con: duckdb.DuckDBPyConnection, t: TableSpec, name: str, cols: str, src: str) -> None:
        """Load a public lookup table whole, and check its declared unique key is unique.

        Uniqueness is what bounds a lookup join (each private row matches at most one public row),
        so a violation stops the sandbox at start-up (the data owner's error, before any query).
        """
        con.execute(f"CREATE TABLE {table_ref(name)} AS SELECT {cols} FROM {src}")
        assert t.info.unique_key is not None
        k = quote_ident(t.info.unique_key)
        row = con.execute(
            f"SELECT count(*), count(DISTINCT {k}), count({k}) FROM {table_ref(name)}"
        ).fetchone()
        assert row is not None
        if not int(row[0]) == int(row[1]) == int(row[2]):
            raise ConfigError(
                str(self.catalog.path),
                f"{t.key}.unique_key",
                f"{t.info.unique_key!r} is not unique (or has NULLs) in {t.file}",
            )
        self.row_counts[name] = int(row[0])
        log.info("loaded public table %s: %d rows", t.name, self.row_counts[name])

    def describe(self) -> CatalogInfo:
        """The public catalog (names, grades, bounds, domains, data versions, the owner's caps); no data."""
        return self._info

    # -- the data owner's settings: cap charges, reload, usage ---------------------------------------

    def charge_release(self, request_id: str, dataset: str, product: Product, loss: ReleaseLoss,
                       catalog: Catalog | None = None) -> ErrorReply | None:
        """Charge one release on the owner's cap before any data is touched; None when it may run.

        What it counts is derived from the sandbox's own pricing (`loss`) and the owner's cap in `catalog`
        (default: the one in force) alone (`sandbox.pricing.cap_rules`); a release the cap's definition cannot count
        is refused before anything is charged. Every product is recorded under its request id, with or
        without a cap, so a repeated id is refused and never run again.
        """
        if self.caps is None:
            return None
        ds = (catalog or self.catalog).dataset(dataset)
        cap = ds.cap if ds is not None else None
        why = refusal(cap, loss, dataset)
        if why is not None:
            return ErrorReply("rejected", INCOMPATIBLE_PREFIX + why)
        try:
            outcome = self.caps.charge(request_id, dataset, product,
                                       counts(loss, cap.conversion_delta if cap else None), cap, now=time.time())
        except sqlite3.Error:  # nothing charged, nothing touched: the gateway refunds and answers UNAVAILABLE
            log.exception("request %s: the cap ledger could not be written", request_id)
            return ErrorReply("rejected", STORAGE_MESSAGE)
        if outcome == "exceeded":
            return ErrorReply("rejected", CAP_MESSAGE)
        if outcome == "exceeded_lifetime":
            return ErrorReply("rejected", CAP_LIFETIME_MESSAGE)
        if outcome == "duplicate":
            return ErrorReply("rejected", DUPLICATE_MESSAGE)
        return None

    def reload(self) -> CatalogInfo | ErrorReply:
        """Re-read the catalog file; swap in the owner's new caps, grades and verification caps atomically.

        Refused (nothing changes, the sandbox keeps serving as before) when the file is invalid or when a
        data-defining part differs (`Catalog.reload_problem`): tables, files, columns, types, bounds,
        domains, units and templates need a restart, which reloads and re-truncates the data.
        """
        with self._reload_lock:
            current = self.catalog
            try:
                fresh = load_catalog(current.path, current.data_dir)
            except ConfigError as exc:
                return ErrorReply("rejected", f"{RELOAD_REFUSED_PREFIX}{exc}")
            problem = current.reload_problem(fresh)
            if problem is not None:
                return ErrorReply("rejected", f"{RELOAD_REFUSED_PREFIX}{problem}")
            self._view = (fresh, self._public(fresh))
            log.info("catalog reloaded from %s: the owner's caps, grades and verification caps", current.path)
            return self._info

    def cap_usage(self, datasets: tuple[str, ...] = ()) -> CapUsageReply | ErrorReply:
        """The owner's caps and what the cap ledger counts on them now (every dataset if `datasets` is empty)."""
        catalog = self.catalog
        names = datasets or tuple(d.name for d in catalog.datasets)
        now = time.time()
        out = []
        for name in names:
            ds = catalog.dataset(name)
            if ds is None:
                return ErrorReply("rejected", "unknown dataset")
            if self.caps is None:
                return ErrorReply("rejected", "this sandbox keeps no cap ledger")
            period, lifetime = self.caps.usage(name, ds.cap, now)
            w = ds.cap.window(now) if ds.cap is not None else None
            out.append(CapUsage(name, ds.cap, w.start if w else None, w.end if w else None, period, lifetime))
        return CapUsageReply(tuple(out), now)

    def verify(self) -> bool:
        """True when the DuckDB connection is still locked down."""
        try:
            cur = self._con.cursor()
            try:
                verify_locked(cur, self._attached)
            finally:
                cur.close()
        except Exception:  # any doubt means "not locked"
            return False
        return True

    def run_select(self, sql: str, timeout_ms: int | None = None) -> list[tuple[Any, ...]]:
        """Run one guarded plan SELECT on a fresh cursor, interrupting it at the deadline.

        Raises:
            PlanRejectedError: `sql` is not one SELECT over loaded tables (see `sandbox.engine.guard`).
            duckdb.Error: the engine failed or the query was interrupted.
        """
        return self.run_guarded(sql, lambda cur: check_select(cur, sql, self._tables), timeout_ms)

    def run_guarded(
        self,
        sql: str,
        check: Callable[[duckdb.DuckDBPyConnection], None],
        timeout_ms: int | None = None,
    ) -> list[tuple[Any, ...]]:
        """Run `sql` on a fresh cursor after `check(cursor)` accepts it, interrupting it at the deadline.

        The one place the sandbox executes SQL for plans and models: `check` is the guard for that kind
        of SQL (it parses, never runs); the deadline is `max_execution_time` plus this watchdog.
        """
        deadline = (timeout_ms or self.limits.query_timeout_ms) / 1000
        cur = self._con.cursor()
        try:
            check(cur)
            with self._watchdog.watch(cur, deadline):
                return cur.execute(sql).fetchall()
        finally:
            cur.close()

    def execute(self, req: ExecuteRequest) -> ExecuteResult | ErrorReply:
        """Price, compile, run and noise one plan.

        Privacy: the sandbox prices the plan with its own catalog and refuses it if the cost
        exceeds `req.epsilon`; each component is released once with `mechanisms.release_vector`
        over all cells. Refusals depend only on the plan and the catalog; any failure after
        touching data is the uniform ErrorReply('failed', '') (engine text goes to stderr only).
        """
        plan = req.plan
        catalog, public = self._view
        ds = catalog.dataset(plan.dataset)
        info = public.dataset(plan.dataset)
        spec = ds.table(plan.table) if ds else None
        if ds is None or info is None or spec is None:
            return ErrorReply("rejected", "unknown dataset or table")
        try:
            # The data owner's grade rules on every column the plan reads, at any depth, first: a
            # refusal depends only on the plan and the catalog, and reads the same nested or not.
            check_plan_grades(plan, info, catalog.grades)
            compiled = compile_dataset_plan(plan, info, max_cells=self.limits.max_groups)
            rel = plan_relation(plan, info)
            costs, loss = self._price_memoized(req, info)
        except PlanRejectedError as exc:
            return ErrorReply("rejected", str(exc))
        # The data owner's cap, charged before touching data (keyed by request id).
        refused = self.charge_release(req.request_id, ds.name, "query", loss, catalog)
        if refused is not None:
            return refused
        try:
            rows = self._release(req, compiled, costs, rel, info.version)
        except Exception:  # uniform failure; details stay in the sandbox log
            log.exception("request %s failed after touching data", req.request_id,
                          extra={"request_id": req.request_id})
            return ErrorReply("failed", "")
        return ExecuteResult(rows=rows, costs=costs, dataset_version=info.version)

    def _price_memoized(self, req: ExecuteRequest, info: DatasetInfo) -> tuple[tuple[ReleaseCost, ...], ReleaseLoss]:
        """`_price`, remembered for the last `_PRICE_MEMO` plans: a pure function of the plan, the authorised
        loss and this process's catalog, so a hit is exactly a fresh pricing (a repeated epsilon saves about
        0.5 ms of OpenDP calls). Refusals raise and are never remembered."""
        key = (json.dumps(plan_to_json(req.plan), sort_keys=True), repr(req.epsilon), repr(req.delta),
               repr(req.rho))
        with self._price_lock:
            hit = self._prices.get(key)
            if hit is not None:
                self._prices.move_to_end(key)
                return hit
        priced = self._price(req, info)
        with self._price_lock:
            self._prices[key] = priced
            while len(self._prices) > _PRICE_MEMO:
                self._prices.popitem(last=False)
        return priced

    @staticmethod
    def _price(req: ExecuteRequest, info: DatasetInfo) -> tuple[tuple[ReleaseCost, ...], ReleaseLoss]:
        """The plan's costs, priced by the sandbox itself, and the release's loss in its own definition.

        Pure DP: the sum of the epsilons (approximate DP with partition selection's delta). zCDP (`req.rho`
        > 0): the Gaussian family priced in rho (`sandbox.pricing.zcdp`), approximate zCDP with partition
        selection's delta. What that loss counts on the owner's cap is `sandbox.pricing.cap_rules`' business.

        Raises:
            PlanRejectedError: the plan costs more than authorised, or cannot be priced.
        """
        if req.rho > 0:
            if req.epsilon != 0:
                raise PlanRejectedError("a zCDP request authorises rho, not epsilon")
            costs = zcdp.price(req.plan, info, req.rho, req.delta)
            rho = zcdp.total_rho(costs)
            if not rho <= req.rho:
                raise PlanRejectedError("the plan costs more than the authorised rho")
            if not mechanisms.total_delta(costs) <= req.delta:
                raise PlanRejectedError("the plan costs more than the authorised delta")
            return costs, ReleaseLoss("zcdp", 0.0, mechanisms.total_delta(costs), rho)
        costs = mechanisms.price(req.plan, info, req.epsilon, req.delta)
        if not mechanisms.total_epsilon(costs) <= req.epsilon:
            raise PlanRejectedError("the plan costs more than the authorised epsilon")
        if not mechanisms.total_delta(costs) <= req.delta:
            raise PlanRejectedError("the plan costs more than the authorised delta")
        return costs, ReleaseLoss.of(mechanisms.total_epsilon(costs), mechanisms.total_delta(costs), 0.0)

    def _release(
        self,
        req: ExecuteRequest,
        compiled: CompiledPlan,
        costs: tuple[ReleaseCost, ...],
        rel: Relation,
        version: str,
    ) -> tuple[ReleaseRow, ...]:
        """Run the plan (or take its exact rows from `self.exact`) and release its noisy rows, noise drawn
        afresh either way (`sandbox.engine.release`)."""
        consumer = req.request_id.partition("/")[0]

        def run(sql: str) -> list[tuple[Any, ...]]:
            return self.exact.rows(consumer, version, sql, self.run_select)

        return release_rows(req.plan, compiled, costs, rel, run)
