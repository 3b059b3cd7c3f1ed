"""Verification: the data owner's yes/no checks about one subject (templates: `sandbox.products.templates`),
executed set-wise.

Each request is recorded in the data owner's cap ledger under its request id before anything is evaluated
(a repeated id is refused, never run again), and each claim is counted on the owner's per-subject cap
(`max_checks_per_subject_per_period`, `sandbox.owner_caps`): a claim over it is not evaluated and is listed
in the result's `capped`; the decision depends only on the requests counted, never on the data.

The SQL of a template is compiled once, at load, from the catalog only. At run time the claims enter
as data: a batch as an Arrow relation registered on the cursor and evaluated with ONE join against a
per-template table (subject, the columns the template reads, the related aggregates), sorted by
subject; a single claim through the same tree rendered with DuckDB prepared-statement parameters.
With an on-disk store the per-template tables are part of it (`template_tables`: built with the data
tables, before the lock-down, spilling under the memory limit, once per data version); in memory they
are built on the locked connection when the verifier starts.
Nothing but the outcome (and band index) leaves.
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from sandbox.catalog import Catalog, DatasetSpec
from sandbox.engine.storage import DerivedTable, sql_table_name, table_ref
from sandbox.engine.watchdog import Watchdog
from sandbox.errors import DUPLICATE_MESSAGE, STORAGE_MESSAGE
from sandbox.plans.render import quote_ident, render_literal
from sandbox.products.templates import RELATED_AGGREGATES, Renderer, Template, load_templates
from sandbox.protocol.messages import (
    ErrorReply,
)
from sandbox.protocol.verification import (
    MATCH,
    NO_MATCH,
    NOT_FOUND,
    DescribeTemplatesRequest,
    TemplatesInfo,
    VerifyClaimsRequest,
    VerifyClaimsResult,
    subject_problems,
)

log = logging.getLogger("sandbox.products.verification")

_ARROW_TYPE = {"int64": pa.int64(), "float64": pa.float64(), "string": pa.string(), "bool": pa.bool_()}
SUBJECT = "__pgw_subject"
INDEX = "__pgw_i"


def _band_sql(value: str, edges: tuple[float, ...]) -> str:
    whens = " ".join(f"WHEN {value} < {render_literal(e)} THEN {i}" for i, e in enumerate(edges))
    return f"(CASE WHEN {value} IS NULL THEN 0 {whens} ELSE {len(edges)} END)"


@dataclass(frozen=True, slots=True)
class _Compiled:
    template: Template
    table: str  # SQL reference of the per-template table (subject, columns read, related aggregates), by subject
    batch_sql: str  # with {claims} standing for the registered relation's name
    single_sql: str


def _table_name(ds: DatasetSpec, tpl: Template) -> str:
    return f"__pgw_v_{ds.name}__{tpl.info.name}"


def _table_select(catalog: Catalog, ds: DatasetSpec, tpl: Template) -> str:
    """The SELECT that fills the per-template table: subject, the columns read, the related aggregates."""
    batch = Renderer(catalog, ds, tpl, "batch")
    batch.bool(tpl.predicate)
    if tpl.band_expr is not None:
        batch.expr(tpl.band_expr)
    cols = sorted(batch.columns)
    select = [f"t.{quote_ident(tpl.subject_column)} AS {SUBJECT}"]
    select += [f"t.{quote_ident(c)} AS {quote_ident(c)}" for c in cols]
    joins = []
    for i, rs in enumerate(tpl.related):
        where = ""
        if rs.where is not None:
            rt = ds.table(rs.table)
            assert rt is not None
            where = Renderer(catalog, ds, tpl, "related", rt.name).bool(rs.where)
        src = table_ref(sql_table_name(ds.name, rs.table))
        key = quote_ident(rs.key)
        if rs.aggregate == "count_distinct":
            # count(DISTINCT c) per key as two plain aggregates: DuckDB spills these under the memory limit,
            # while a grouped DISTINCT aggregate inside this join ran out of memory (1.5M keys, 64 MiB).
            col = quote_ident(str(rs.column))
            kept = f"{col} IS NOT NULL" + (f" AND {where}" if where else "")
            per_key = (f"SELECT k, count(*) AS v FROM (SELECT DISTINCT {key} AS k, {col} AS c FROM {src} "
                       f"WHERE {kept}) GROUP BY k")
        else:
            agg = RELATED_AGGREGATES[rs.aggregate].format(c="*" if rs.column is None else quote_ident(rs.column))
            per_key = f"SELECT {key} AS k, {agg} AS v FROM {src}{' WHERE ' + where if where else ''} GROUP BY {key}"
        joins.append(f" LEFT JOIN ({per_key}) r{i} ON r{i}.k = t.{key}")
        select.append(f"coalesce(r{i}.v, 0) AS {quote_ident('__pgw_rel_' + rs.name)}")
    return (
        f"SELECT {', '.join(select)} "
        f"FROM {table_ref(sql_table_name(ds.name, tpl.table))} t{''.join(joins)} "
        f"WHERE t.{quote_ident(tpl.subject_column)} IS NOT NULL ORDER BY {SUBJECT}"
    )


def template_tables(catalog: Catalog) -> tuple[DerivedTable, ...]:
    """Every verification template's table, as the engine builds it into an on-disk store before the lock-down.

    Raises:
        ConfigError: a template is invalid.
    """
    out = []
    for tpl in load_templates(catalog):
        ds = catalog.dataset(tpl.info.dataset)
        assert ds is not None
        out.append(DerivedTable(_table_name(ds, tpl), _table_select(catalog, ds, tpl)))
    return tuple(out)


def _compile(catalog: Catalog, ds: DatasetSpec, tpl: Template, ref: str) -> _Compiled:
    """The evaluation SQL in both modes, over the per-template table named by the SQL reference `ref`."""
    batch = Renderer(catalog, ds, tpl, "batch")
    single = Renderer(catalog, ds, tpl, "single")
    pred_b, pred_s = batch.bool(tpl.predicate), single.bool(tpl.predicate)
    band_b = band_s = "0"
    if tpl.band_expr is not None:
        band_b = _band_sql(batch.expr(tpl.band_expr)[0], tpl.band_edges)
        band_s = _band_sql(single.expr(tpl.band_expr)[0], tpl.band_edges)
    # A claim whose subject has no row gets no row from the join (batch) / no row at all (single);
    # both yield matched = false, found = 0, band = 0 through the same aggregate.
    present = f"v.{SUBJECT} IS NOT NULL"
    batch_sql = (
        f"SELECT c.{INDEX}, bool_or(coalesce({present} AND {pred_b}, false)), count(v.{SUBJECT}), "
        f"max(CASE WHEN {present} THEN {band_b} END) "
        f"FROM {{claims}} c LEFT JOIN {ref} v ON v.{SUBJECT} = c.{SUBJECT} "
        f"GROUP BY c.{INDEX}"
    )
    single_sql = (
        f"SELECT bool_or(coalesce({pred_s}, false)), count(v.{SUBJECT}), max({band_s}) "
        f"FROM {ref} v WHERE v.{SUBJECT} = CAST($__pgw_subject AS VARCHAR)"
    )
    return _Compiled(tpl, ref, batch_sql, single_sql)


# ---------------------------------------------------------------------------------------------------
# Execution
# ---------------------------------------------------------------------------------------------------


_WATCHDOG = Watchdog()  # one thread for every check (sandbox/engine/watchdog.py; a thread per check cost ~1 ms)


class Verifier:
    """Answers verification requests on the engine's locked connection."""

    def __init__(self, con: duckdb.DuckDBPyConnection, catalog: Catalog,
                 versions: dict[str, str], timeout_ms: int, engine: Any = None,
                 stored: frozenset[str] = frozenset()) -> None:
        """Load the templates and find or build each template's table.

        A table named in `stored` is already in the engine's store (an on-disk store builds them before the
        lock-down, `template_tables`); any other is built now on `con`, in memory (allowed after lock-down),
        under the query deadline. `engine` (sandbox.engine.engine.Engine) supplies the owner's cap ledger and
        per-subject caps in force; without it (embedded use) requests are neither recorded nor capped.

        Raises:
            ConfigError: a template is invalid.
        """
        self._engine = engine
        self._con = con
        self._timeout_s = timeout_ms / 1000
        self._versions = versions
        self._compiled: dict[tuple[str, str], _Compiled] = {}
        self._seq = itertools.count()
        for tpl in load_templates(catalog):
            ds = catalog.dataset(tpl.info.dataset)
            assert ds is not None
            name = _table_name(ds, tpl)
            if name in stored:
                ref = table_ref(name)
            else:
                ref = quote_ident(name)
                con.execute(f"CREATE TABLE {ref} AS {_table_select(catalog, ds, tpl)}")
            self._compiled[(ds.name, tpl.info.name)] = _compile(catalog, ds, tpl, ref)
            log.info("verification template %s.%s ready", ds.name, tpl.info.name)
        self.info = TemplatesInfo(
            tuple(c.template.info for c in self._compiled.values()), tuple(sorted(versions.items())))

    @classmethod
    def for_engine(cls, engine: Any) -> Verifier:
        """A verifier on `engine`'s connection (sandbox.engine.engine.Engine)."""
        versions = {d.name: d.version for d in engine.describe().datasets}
        return cls(engine._con, engine.catalog, versions, engine.limits.query_timeout_ms, engine,
                   engine.derived_tables)

    def handle(self, msg: object) -> VerifyClaimsResult | TemplatesInfo | ErrorReply:
        """Answer a DescribeTemplatesRequest or a VerifyClaimsRequest."""
        if isinstance(msg, DescribeTemplatesRequest):
            return self.info
        if isinstance(msg, VerifyClaimsRequest):
            return self.verify(msg)
        return ErrorReply("bad_request", f"unexpected message {type(msg).__name__}")

    def _check(self, req: VerifyClaimsRequest) -> _Compiled | str:
        c = self._compiled.get((req.dataset, req.template))
        if c is None:
            return "unknown dataset or template"
        info = c.template.info
        names = [n for n, _ in req.params]
        if sorted(names) != sorted(p.name for p in info.parameters) or len(set(names)) != len(names):
            return "the parameters are not the template's declared parameters"
        for name, values in req.params:
            spec = info.param(name)
            assert spec is not None
            # Distinct values only (a batch repeats a few ladder rungs); typed, so 1 and True differ.
            for v in {(type(v), v) for v in values}:
                problem = spec.problem(v[1])
                if problem:
                    return problem
        problems = subject_problems(info.subject_format, req.subjects)
        if problems:
            return f"invalid subject: {problems[min(problems)]}"
        return c

    def _admit(self, req: VerifyClaimsRequest) -> list[bool] | ErrorReply:
        """Record the request id and count its claims on the owner's per-subject cap (`CapLedger.charge_checks`),
        before any data is touched: which claims may be evaluated, or a refusal of a repeated request id."""
        engine = self._engine
        if engine is None or engine.caps is None:
            return [True] * len(req.subjects)
        ds = engine.catalog.dataset(req.dataset)
        cap = ds.subject_cap(req.template) if ds is not None else None
        try:
            admitted: list[bool] | None = engine.caps.charge_checks(
                req.request_id, req.dataset, req.template, req.subjects, cap, now=time.time())
        except sqlite3.Error:  # nothing counted, nothing touched: the gateway refunds the chunk
            log.exception("verification %s: the cap ledger could not be written", req.request_id)
            return ErrorReply("rejected", STORAGE_MESSAGE)
        if admitted is None:
            return ErrorReply("rejected", DUPLICATE_MESSAGE)
        return admitted

    def verify(self, req: VerifyClaimsRequest) -> VerifyClaimsResult | ErrorReply:
        """Evaluate the template for every claim the owner's per-subject cap admits; refusals depend only on
        the request, the catalog and the cap's counts, never on the data."""
        checked = self._check(req)
        if isinstance(checked, str):
            return ErrorReply("rejected", checked)
        info = checked.template.info
        admitted = self._admit(req)
        if isinstance(admitted, ErrorReply):
            return admitted
        capped = tuple(i for i, ok in enumerate(admitted) if not ok)
        if capped:
            if len(capped) == len(req.subjects):
                return VerifyClaimsResult((), (), 0, self._versions.get(req.dataset, ""), capped)
            keep = [i for i, ok in enumerate(admitted) if ok]
            req = VerifyClaimsRequest(req.request_id, req.dataset, req.template,
                                      tuple(req.subjects[i] for i in keep),
                                      tuple((n, tuple(v[i] for i in keep)) for n, v in req.params))
        try:
            single = len(req.subjects) == 1
            rows = self._single(checked, req) if single else self._batch(checked, req)
        except Exception:  # uniform failure; details stay in the sandbox log
            log.exception("verification %s failed after touching data", req.request_id,
                          extra={"request_id": req.request_id})
            return ErrorReply("failed", "")
        outcomes, bands, not_found = [], [], 0
        for matched, found, band in rows:
            if not found:
                not_found += 1
                outcomes.append(NO_MATCH if info.not_found_as_no_match else NOT_FOUND)
            else:
                outcomes.append(MATCH if matched else NO_MATCH)
            bands.append(int(band or 0) if info.band_labels else -1)
        return VerifyClaimsResult(tuple(outcomes), tuple(bands), not_found,
                                  self._versions.get(req.dataset, ""), capped)

    def _run(self, cur: duckdb.DuckDBPyConnection, sql: str,
             params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        with _WATCHDOG.watch(cur, self._timeout_s):
            return cur.execute(sql, params).fetchall() if params else cur.execute(sql).fetchall()

    def _single(self, c: _Compiled, req: VerifyClaimsRequest) -> list[tuple[Any, ...]]:
        params: dict[str, Any] = {"__pgw_subject": req.subjects[0]}
        params.update({f"p_{n}": v[0] for n, v in req.params})
        cur = self._con.cursor()
        try:
            rows = self._run(cur, c.single_sql, params)
        finally:
            cur.close()
        matched, found, band = rows[0]
        return [(bool(matched), int(found) > 0, band)]

    def _batch(self, c: _Compiled, req: VerifyClaimsRequest) -> list[tuple[Any, ...]]:
        info = c.template.info
        n = len(req.subjects)
        columns: dict[str, pa.Array] = {
            INDEX: pa.array(range(n), pa.int64()),
            SUBJECT: pa.array(req.subjects, pa.string()),
        }
        for name, values in req.params:
            spec = info.param(name)
            assert spec is not None
            columns["p_" + name] = pa.array(values, _ARROW_TYPE[spec.type])
        relation = f"__pgw_claims_{next(self._seq)}"
        cur = self._con.cursor()
        try:
            cur.register(relation, pa.table(columns))
            rows = self._run(cur, c.batch_sql.format(claims=quote_ident(relation)))
        finally:
            cur.close()
        out: list[tuple[Any, ...]] = [(False, False, 0)] * n
        for i, matched, found, band in rows:
            out[i] = (bool(matched), int(found) > 0, band)
        if len(rows) != n:
            raise RuntimeError("the evaluation did not return one row per claim")
        return out
