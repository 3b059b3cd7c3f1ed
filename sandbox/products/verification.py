"""Verification templates: the data owner's yes/no checks about one subject, executed set-wise.

A template lives in the catalog under `[datasets.<ds>.verifications.<name>]` (complete examples in
`policies/catalog.toml`):

    table = "residents"                 # the subject's table
    subject_column = "id_number"        # the key a consumer sends (never returned)
    subject_format = "resident_id"      # resident_id | credit_code (check characters verified)
    not_found_as_no_match = true        # default: "not found" is reported as NO_MATCH
    requires_case_reference = false     # default: no consent / case reference needed
    [....parameters.threshold]          # typed parameters, each with exactly one of:
    type = "int64"                      #   allowed = [...]   a closed list
    ladder = [50000, 100000, 200000]    #   ladder = [...]    ascending thresholds
                                        #   max_length = N    a free string, compared exactly
    [....related.months]                # optional: an aggregate over a second table of the dataset
    table = "social_insurance"          #   joined on `key` (a column of both tables), computed once
    key = "person_id"                   #   per unit at load (its filter cannot use parameters)
    aggregate = "count_distinct"        #   count | count_distinct | sum
    column = "month"
    [....predicate]                     # a typed tree: the plan node types of sandbox.protocol.messages
    t = "bin"                           # (col, lit, unary, bin, isnull, in, between) plus
    op = ">="                           # {t = "param", name} and {t = "rel", name}
    l = { t = "col", name = "income" }
    r = { t = "param", name = "threshold" }
    [....band]                          # optional coarse band of a numeric expression
    expr = { t = "rel", name = "months" }
    edges = [6, 12]                     # band i: edges[i-1] <= x < edges[i]; a missing value -> band 0
    labels = ["0-5", "6-11", "12"]

Each request is recorded in the data owner's cap ledger under its request id before anything is evaluated
(a repeated id is refused, never run again), and each claim is counted on the owner's per-subject cap
(`max_checks_per_subject_per_period`, `sandbox.owner_caps`): a claim over it is not evaluated and is listed
in the result's `capped`; the decision depends only on the requests counted, never on the data.

The SQL of a template is compiled once, at load, from the catalog only. At run time the claims enter
as data: a batch as an Arrow relation registered on the cursor and evaluated with ONE join against a
per-template table (subject, the columns the template reads, the related aggregates), sorted by
subject; a single claim through the same tree rendered with DuckDB prepared-statement parameters.
Nothing but the outcome (and band index) leaves.
"""

from __future__ import annotations

import itertools
import logging
import math
import sqlite3
import time
import tomllib
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from sandbox.catalog import Catalog, DatasetSpec
from sandbox.engine.storage import table_ref
from sandbox.engine.watchdog import Watchdog
from sandbox.errors import DUPLICATE_MESSAGE, STORAGE_MESSAGE, ConfigError
from sandbox.plans.compile import quote_ident, render_literal
from sandbox.protocol.messages import (
    ARITHMETIC_OPS,
    COMPARISON_OPS,
    LOGICAL_OPS,
    Between,
    Binary,
    Column,
    ErrorReply,
    Expr,
    InList,
    IsNull,
    Literal,
    Scalar,
    Unary,
)
from sandbox.protocol.verification import (
    MATCH,
    NO_MATCH,
    NOT_FOUND,
    PARAM_TYPES,
    SUBJECT_FORMATS,
    DescribeTemplatesRequest,
    ParamSpec,
    TemplateInfo,
    TemplatesInfo,
    VerifyClaimsRequest,
    VerifyClaimsResult,
    subject_problems,
)

log = logging.getLogger("sandbox.products.verification")

_SQL_TYPE = {"int64": "BIGINT", "float64": "DOUBLE", "string": "VARCHAR", "bool": "BOOLEAN"}
_ARROW_TYPE = {"int64": pa.int64(), "float64": pa.float64(), "string": pa.string(), "bool": pa.bool_()}
_KIND = {"int64": "num", "float64": "num", "string": "str", "bool": "bool"}
_AGGREGATES = {"count": "count({c})", "count_distinct": "count(DISTINCT {c})", "sum": "sum({c})"}
MAX_LADDER = 64
MAX_ALLOWED = 1000
SUBJECT = "__pgw_subject"
INDEX = "__pgw_i"


@dataclass(frozen=True, slots=True)
class Param:
    """A reference to a template parameter inside a predicate (bound as typed data at run time)."""

    name: str


@dataclass(frozen=True, slots=True)
class Related:
    """A reference to one of the template's related aggregates (per unit, computed at load)."""

    name: str


TemplateExpr = Expr | Param | Related


@dataclass(frozen=True, slots=True)
class RelatedSpec:
    """An aggregate over a second table of the dataset, joined to the subject's row on `key`."""

    name: str
    table: str
    key: str
    aggregate: str
    column: str | None
    where: TemplateExpr | None


@dataclass(frozen=True, slots=True)
class Template:
    """A validated template: its public part, its predicate and how to evaluate it."""

    info: TemplateInfo
    table: str
    subject_column: str
    predicate: TemplateExpr
    related: tuple[RelatedSpec, ...]
    band_expr: TemplateExpr | None
    band_edges: tuple[float, ...]


# ---------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------


class _Loader:
    def __init__(self, catalog: Catalog) -> None:
        self.file = str(catalog.path)
        self.catalog = catalog

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.file, key, problem)

    def keys(self, d: Any, key: str, required: set[str], optional: set[str]) -> dict[str, Any]:
        if not isinstance(d, dict):
            raise self.fail(key, "must be a table")
        for k in sorted(set(d) - required - optional):
            raise self.fail(f"{key}.{k}", "unknown key")
        for k in sorted(required - set(d)):
            raise self.fail(f"{key}.{k}", "missing (required, no default)")
        return d

    def expr(self, d: Any, key: str, depth: int = 0) -> TemplateExpr:
        if depth > 32:
            raise self.fail(key, "expression nested too deeply")
        if not isinstance(d, dict) or "t" not in d:
            raise self.fail(key, "must be an expression table with a 't' key")
        t = d["t"]
        try:
            if t == "col":
                self.keys(d, key, {"t", "name"}, set())
                return Column(str(d["name"]))
            if t == "lit":
                self.keys(d, key, {"t", "value"}, set())
                v = d["value"]
                if not isinstance(v, bool | int | float | str):
                    raise self.fail(f"{key}.value", "must be a number, string or boolean")
                return Literal(v)
            if t == "param":
                self.keys(d, key, {"t", "name"}, set())
                return Param(str(d["name"]))
            if t == "rel":
                self.keys(d, key, {"t", "name"}, set())
                return Related(str(d["name"]))
            if t == "unary":
                self.keys(d, key, {"t", "op", "operand"}, set())
                return Unary(str(d["op"]), self.expr(d["operand"], f"{key}.operand", depth + 1))  # type: ignore[arg-type]
            if t == "bin":
                self.keys(d, key, {"t", "op", "l", "r"}, set())
                return Binary(str(d["op"]), self.expr(d["l"], f"{key}.l", depth + 1),  # type: ignore[arg-type]
                              self.expr(d["r"], f"{key}.r", depth + 1))  # type: ignore[arg-type]
            if t == "isnull":
                self.keys(d, key, {"t", "operand"}, {"negated"})
                return IsNull(self.expr(d["operand"], f"{key}.operand", depth + 1),  # type: ignore[arg-type]
                              bool(d.get("negated", False)))
            if t == "in":
                self.keys(d, key, {"t", "operand", "values"}, {"negated"})
                return InList(self.expr(d["operand"], f"{key}.operand", depth + 1),  # type: ignore[arg-type]
                              tuple(Literal(v) for v in d["values"]), bool(d.get("negated", False)))
            if t == "between":
                self.keys(d, key, {"t", "operand", "low", "high"}, {"negated"})
                return Between(self.expr(d["operand"], f"{key}.operand", depth + 1),  # type: ignore[arg-type]
                               self.expr(d["low"], f"{key}.low", depth + 1),  # type: ignore[arg-type]
                               self.expr(d["high"], f"{key}.high", depth + 1),  # type: ignore[arg-type]
                               bool(d.get("negated", False)))
        except ValueError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise self.fail(key, str(exc)) from exc
        raise self.fail(f"{key}.t", f"unknown expression node {t!r}")

    def param(self, name: str, d: Any, key: str) -> ParamSpec:
        self.keys(d, key, {"type"}, {"allowed", "ladder", "max_length", "description"})
        typ = d["type"]
        if typ not in PARAM_TYPES:
            raise self.fail(f"{key}.type", f"must be one of {', '.join(PARAM_TYPES)}")
        given = [k for k in ("allowed", "ladder", "max_length") if k in d]
        if len(given) != 1:
            raise self.fail(key, "needs exactly one of allowed, ladder, max_length")
        spec = ParamSpec(name=name, type=typ, description=str(d.get("description", "")))
        if "max_length" in d:
            n = d["max_length"]
            if typ != "string" or isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1000:
                raise self.fail(f"{key}.max_length", "only for string parameters, 1 to 1000")
            return ParamSpec(name, typ, max_length=n, description=spec.description)
        values = d[given[0]]
        limit = MAX_LADDER if given[0] == "ladder" else MAX_ALLOWED
        if not isinstance(values, list) or not 1 <= len(values) <= limit:
            raise self.fail(f"{key}.{given[0]}", f"must be a list of 1 to {limit} values")
        for i, v in enumerate(values):
            if spec.problem(v) is not None:
                raise self.fail(f"{key}.{given[0]}[{i}]", f"{v!r} is not a valid {typ} value")
        if len(set(values)) != len(values):
            raise self.fail(f"{key}.{given[0]}", "values must be distinct")
        if given[0] == "ladder":
            if typ not in ("int64", "float64"):
                raise self.fail(f"{key}.ladder", "ladders are for numeric parameters")
            if list(values) != sorted(values):
                raise self.fail(f"{key}.ladder", "must be ascending")
            return ParamSpec(name, typ, ladder=tuple(values), description=spec.description)
        return ParamSpec(name, typ, allowed=tuple(values), description=spec.description)

    def template(self, ds: DatasetSpec, name: str, d: Any) -> Template:
        key = f"datasets.{ds.name}.verifications.{name}"
        if not name or "__" in name or not name.replace("_", "").isalnum() or not name.isascii():
            raise self.fail(key, "template names are letters, digits and _ (no '__')")
        # max_checks_per_subject_per_period: the owner's per-subject cap (sandbox.owner_caps, read by the
        # catalog so a reload can change it)
        self.keys(d, key, {"table", "subject_column", "subject_format", "predicate"},
                  {"description", "parameters", "related", "band", "not_found_as_no_match",
                   "requires_case_reference", "max_checks_per_subject_per_period"})
        table = ds.table(str(d["table"]))
        if table is None:
            raise self.fail(f"{key}.table", f"no table {d['table']!r} in dataset {ds.name!r}")
        subject = table.info.column(str(d["subject_column"]))
        if subject is None or subject.type != "string":
            raise self.fail(f"{key}.subject_column", "must be a string column of the table")
        fmt = d["subject_format"]
        if fmt not in SUBJECT_FORMATS:
            raise self.fail(f"{key}.subject_format", f"must be one of {', '.join(SUBJECT_FORMATS)}")
        params_raw = self.keys(d.get("parameters", {}), f"{key}.parameters", set(),
                               set(d.get("parameters", {})) if isinstance(d.get("parameters"), dict) else set())
        params = []
        for pname, p in params_raw.items():
            if not pname.replace("_", "").isalnum() or not pname.isascii() or len(pname) > 63:
                raise self.fail(f"{key}.parameters.{pname}", "parameter names are letters, digits, _")
            params.append(self.param(pname, p, f"{key}.parameters.{pname}"))
        related = []
        rel_raw = d.get("related", {})
        self.keys(rel_raw, f"{key}.related", set(), set(rel_raw) if isinstance(rel_raw, dict) else set())
        for rname, r in rel_raw.items():
            rkey = f"{key}.related.{rname}"
            if not rname.replace("_", "").isalnum() or not rname.isascii():
                raise self.fail(rkey, "names are letters, digits, _")
            self.keys(r, rkey, {"table", "key", "aggregate"}, {"column", "where"})
            rt = ds.table(str(r["table"]))
            if rt is None:
                raise self.fail(f"{rkey}.table", f"no table {r['table']!r} in dataset {ds.name!r}")
            if rt.info.column(str(r["key"])) is None or table.info.column(str(r["key"])) is None:
                raise self.fail(f"{rkey}.key", "must be a column of both tables")
            if r["aggregate"] not in _AGGREGATES:
                raise self.fail(f"{rkey}.aggregate", f"must be one of {', '.join(_AGGREGATES)}")
            col = r.get("column")
            if (col is None) != (r["aggregate"] == "count"):
                raise self.fail(f"{rkey}.column", "count takes no column; the others need one")
            if col is not None and rt.info.column(str(col)) is None:
                raise self.fail(f"{rkey}.column", f"not a column of {rt.name!r}")
            if r["aggregate"] == "sum" and rt.info.column(str(col)).type not in ("int64", "float64"):  # type: ignore[union-attr]
                raise self.fail(f"{rkey}.column", "sum needs a numeric column")
            where = self.expr(r["where"], f"{rkey}.where") if "where" in r else None
            related.append(RelatedSpec(rname, rt.name, str(r["key"]), str(r["aggregate"]),
                                       None if col is None else str(col), where))
        band_expr: TemplateExpr | None = None
        edges: tuple[float, ...] = ()
        labels: tuple[str, ...] = ()
        if "band" in d:
            b = self.keys(d["band"], f"{key}.band", {"expr", "edges", "labels"}, set())
            band_expr = self.expr(b["expr"], f"{key}.band.expr")
            e, lab = b["edges"], b["labels"]
            if (not isinstance(e, list) or not e or any(isinstance(x, bool) or not isinstance(x, int | float)
                                                         or not math.isfinite(x) for x in e)
                    or list(e) != sorted(set(e))):
                raise self.fail(f"{key}.band.edges", "must be a non-empty strictly ascending number list")
            if not isinstance(lab, list) or len(lab) != len(e) + 1 or not all(isinstance(x, str) for x in lab):
                raise self.fail(f"{key}.band.labels", "must be len(edges) + 1 strings")
            edges, labels = tuple(float(x) for x in e), tuple(lab)
        flags = {}
        for flag, default in (("not_found_as_no_match", True), ("requires_case_reference", False)):
            v = d.get(flag, default)
            if not isinstance(v, bool):
                raise self.fail(f"{key}.{flag}", "must be true or false")
            flags[flag] = v
        info = TemplateInfo(
            dataset=ds.name, name=name, description=str(d.get("description", "")),
            subject_format=fmt, parameters=tuple(params), band_labels=labels,
            not_found_as_no_match=flags["not_found_as_no_match"],
            requires_case_reference=flags["requires_case_reference"],
        )
        tpl = Template(info, table.name, subject.name, self.expr(d["predicate"], f"{key}.predicate"),
                       tuple(related), band_expr, edges)
        # Type-check every expression now, so a bad template stops the sandbox at start.
        r_ = _Renderer(self.catalog, ds, tpl, "batch")
        try:
            for rs in tpl.related:
                if rs.where is not None:
                    rt = ds.table(rs.table)
                    assert rt is not None
                    _Renderer(self.catalog, ds, tpl, "related", rt.name).bool(rs.where)
            r_.bool(tpl.predicate)
            if tpl.band_expr is not None:
                _sql, kind = r_.expr(tpl.band_expr)
                if kind != "num":
                    raise ValueError("the band expression must be numeric")
        except ValueError as exc:
            raise self.fail(key, str(exc)) from exc
        return tpl


def load_templates(catalog: Catalog) -> tuple[Template, ...]:
    """Read and validate the verification templates of every dataset of `catalog`.

    Raises:
        ConfigError: a template is invalid (file, dotted key, problem).
    """
    loader = _Loader(catalog)
    try:
        raw = tomllib.loads(catalog.path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise loader.fail("(file)", f"cannot read: {exc}") from exc
    out: list[Template] = []
    for ds in catalog.datasets:
        vs = raw.get("datasets", {}).get(ds.name, {}).get("verifications", {})
        loader.keys(vs, f"datasets.{ds.name}.verifications", set(), set(vs) if isinstance(vs, dict) else set())
        out.extend(loader.template(ds, name, d) for name, d in vs.items())
    return tuple(out)


# ---------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------


def _lit_kind(v: Scalar) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    return "num" if isinstance(v, int | float) else "str"


class _Renderer:
    """SQL for a template expression. Modes: `batch` (claims relation `c`), `single` (named prepared
    parameters), `related` (over the related table, no parameters)."""

    def __init__(self, catalog: Catalog, ds: DatasetSpec, tpl: Template, mode: str,
                 related_table: str | None = None) -> None:
        self.ds = ds
        self.tpl = tpl
        self.mode = mode
        t = ds.table(related_table or tpl.table)
        assert t is not None
        self.table = t
        self.columns: set[str] = set()

    def bool(self, e: TemplateExpr) -> str:
        sql, kind = self.expr(e)
        if kind not in ("bool", "null"):
            raise ValueError("the predicate must be boolean")
        return sql

    def expr(self, e: TemplateExpr, depth: int = 0) -> tuple[str, str]:
        if depth > 32:
            raise ValueError("expression nested too deeply")
        match e:
            case Column(name):
                col = self.table.info.column(name)
                if col is None:
                    raise ValueError(f"unknown column {name!r} of table {self.table.name!r}")
                self.columns.add(name)
                prefix = "" if self.mode == "related" else "v."
                return prefix + quote_ident(name), _KIND[col.type]
            case Literal(value):
                return render_literal(value), _lit_kind(value)
            case Param(name):
                if self.mode == "related":
                    raise ValueError("a related aggregate's filter cannot use parameters")
                p = self.tpl.info.param(name)
                if p is None:
                    raise ValueError(f"undeclared parameter {name!r}")
                ref = f"c.{quote_ident('p_' + name)}" if self.mode == "batch" else f"$p_{name}"
                return f"CAST({ref} AS {_SQL_TYPE[p.type]})", _KIND[p.type]
            case Related(name):
                if self.mode == "related" or not any(r.name == name for r in self.tpl.related):
                    raise ValueError(f"undeclared related aggregate {name!r}")
                return f"v.{quote_ident('__pgw_rel_' + name)}", "num"
            case Unary("-", operand):
                sql, kind = self.expr(operand, depth + 1)
                self._need(kind, "num", "-")
                return f"(-CAST({sql} AS DOUBLE))", "num"
            case Unary("NOT", operand):
                sql, kind = self.expr(operand, depth + 1)
                self._need(kind, "bool", "NOT")
                return f"(NOT {sql})", "bool"
            case Binary(op, left, right):
                lsql, lk = self.expr(left, depth + 1)
                rsql, rk = self.expr(right, depth + 1)
                if op in ARITHMETIC_OPS:
                    self._need(lk, "num", op)
                    self._need(rk, "num", op)
                    return f"(CAST({lsql} AS DOUBLE) {op} CAST({rsql} AS DOUBLE))", "num"
                if op in COMPARISON_OPS:
                    if lk != rk and "null" not in (lk, rk):
                        raise ValueError(f"operator {op} compares {lk} with {rk}")
                    return f"({lsql} {op} {rsql})", "bool"
                if op in LOGICAL_OPS:
                    self._need(lk, "bool", op)
                    self._need(rk, "bool", op)
                    return f"({lsql} {op} {rsql})", "bool"
            case IsNull(operand, negated):
                sql, _ = self.expr(operand, depth + 1)
                return f"({sql} IS {'NOT ' if negated else ''}NULL)", "bool"
            case InList(operand, values, negated):
                sql, kind = self.expr(operand, depth + 1)
                if not values:
                    raise ValueError("IN needs values")
                for v in values:
                    if _lit_kind(v.value) != kind:
                        raise ValueError("IN list values must match the operand's type")
                items = ", ".join(render_literal(v.value) for v in values)
                return f"({sql} {'NOT ' if negated else ''}IN ({items}))", "bool"
            case Between(operand, low, high, negated):
                sql, kind = self.expr(operand, depth + 1)
                lo, lok = self.expr(low, depth + 1)
                hi, hik = self.expr(high, depth + 1)
                if not kind == lok == hik:
                    raise ValueError("BETWEEN operands must have one type")
                return f"({sql} {'NOT ' if negated else ''}BETWEEN {lo} AND {hi})", "bool"
        raise ValueError(f"unsupported expression {e!r}")

    @staticmethod
    def _need(kind: str, want: str, op: str) -> None:
        if kind not in (want, "null"):
            raise ValueError(f"operator {op} needs {want} operands, got {kind}")


def _band_sql(value: str, edges: tuple[float, ...]) -> str:
    whens = " ".join(f"WHEN {value} < {render_literal(e)} THEN {i}" for i, e in enumerate(edges))
    return f"(CASE WHEN {value} IS NULL THEN 0 {whens} ELSE {len(edges)} END)"


@dataclass(frozen=True, slots=True)
class _Compiled:
    template: Template
    table: str  # the per-template table (subject, columns read, related aggregates), sorted by subject
    batch_sql: str  # with {claims} standing for the registered relation's name
    single_sql: str


def _compile(catalog: Catalog, ds: DatasetSpec, tpl: Template) -> tuple[_Compiled, str]:
    """The per-template table's CREATE statement, and the evaluation SQL in both modes."""
    from sandbox.engine.storage import sql_table_name  # the engine's naming of loaded tables

    batch = _Renderer(catalog, ds, tpl, "batch")
    single = _Renderer(catalog, ds, tpl, "single")
    pred_b, pred_s = batch.bool(tpl.predicate), single.bool(tpl.predicate)
    band_b = band_s = "0"
    if tpl.band_expr is not None:
        band_b = _band_sql(batch.expr(tpl.band_expr)[0], tpl.band_edges)
        band_s = _band_sql(single.expr(tpl.band_expr)[0], tpl.band_edges)
    name = f"__pgw_v_{ds.name}__{tpl.info.name}"
    cols = sorted(batch.columns)
    select = [f"t.{quote_ident(tpl.subject_column)} AS {SUBJECT}"]
    select += [f"t.{quote_ident(c)} AS {quote_ident(c)}" for c in cols]
    joins = []
    for i, rs in enumerate(tpl.related):
        agg = _AGGREGATES[rs.aggregate].format(c="*" if rs.column is None else quote_ident(rs.column))
        where = ""
        if rs.where is not None:
            rt = ds.table(rs.table)
            assert rt is not None
            where = " WHERE " + _Renderer(catalog, ds, tpl, "related", rt.name).bool(rs.where)
        src = table_ref(sql_table_name(ds.name, rs.table))
        joins.append(
            f" LEFT JOIN (SELECT {quote_ident(rs.key)} AS k, {agg} AS v FROM {src}{where}"
            f" GROUP BY {quote_ident(rs.key)}) r{i} ON r{i}.k = t.{quote_ident(rs.key)}"
        )
        select.append(f"coalesce(r{i}.v, 0) AS {quote_ident('__pgw_rel_' + rs.name)}")
    create = (
        f"CREATE TABLE {quote_ident(name)} AS SELECT {', '.join(select)} "
        f"FROM {table_ref(sql_table_name(ds.name, tpl.table))} t{''.join(joins)} "
        f"WHERE t.{quote_ident(tpl.subject_column)} IS NOT NULL ORDER BY {SUBJECT}"
    )
    # A claim whose subject has no row gets no row from the join (batch) / no row at all (single);
    # both yield matched = false, found = 0, band = 0 through the same aggregate.
    present = f"v.{SUBJECT} IS NOT NULL"
    batch_sql = (
        f"SELECT c.{INDEX}, bool_or(coalesce({present} AND {pred_b}, false)), count(v.{SUBJECT}), "
        f"max(CASE WHEN {present} THEN {band_b} END) "
        f"FROM {{claims}} c LEFT JOIN {quote_ident(name)} v ON v.{SUBJECT} = c.{SUBJECT} "
        f"GROUP BY c.{INDEX}"
    )
    single_sql = (
        f"SELECT bool_or(coalesce({pred_s}, false)), count(v.{SUBJECT}), max({band_s}) "
        f"FROM {quote_ident(name)} v WHERE v.{SUBJECT} = CAST($__pgw_subject AS VARCHAR)"
    )
    return _Compiled(tpl, name, batch_sql, single_sql), create


# ---------------------------------------------------------------------------------------------------
# Execution
# ---------------------------------------------------------------------------------------------------


_WATCHDOG = Watchdog()  # one thread for every check (sandbox/engine/watchdog.py; a thread per check cost ~1 ms)


class Verifier:
    """Answers verification requests on the engine's locked connection."""

    def __init__(self, con: duckdb.DuckDBPyConnection, catalog: Catalog,
                 versions: dict[str, str], timeout_ms: int, engine: Any = None) -> None:
        """Load the templates, build each template's table (allowed after lock-down: in-memory only).

        `engine` (sandbox.engine.engine.Engine) supplies the owner's cap ledger and per-subject caps in force; without
        it (embedded use) requests are neither recorded nor capped.

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
            compiled, create = _compile(catalog, ds, tpl)
            con.execute(create)
            self._compiled[(ds.name, tpl.info.name)] = compiled
            log.info("verification template %s.%s ready", ds.name, tpl.info.name)
        self.info = TemplatesInfo(
            tuple(c.template.info for c in self._compiled.values()), tuple(sorted(versions.items())))

    @classmethod
    def for_engine(cls, engine: Any) -> Verifier:
        """A verifier on `engine`'s connection (sandbox.engine.engine.Engine)."""
        versions = {d.name: d.version for d in engine.describe().datasets}
        return cls(engine._con, engine.catalog, versions, engine.limits.query_timeout_ms, engine)

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
