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

The templates are read and type-checked here (`Renderer` reads their expressions as SQL), from the catalog only;
`sandbox.products.verification` compiles and runs them.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from typing import Any

from sandbox.catalog import Catalog, DatasetSpec
from sandbox.errors import ConfigError
from sandbox.plans.render import quote_ident, render_literal
from sandbox.protocol.messages import (
    ARITHMETIC_OPS,
    COMPARISON_OPS,
    LOGICAL_OPS,
    Between,
    Binary,
    Column,
    Expr,
    InList,
    IsNull,
    Literal,
    Scalar,
    Unary,
)
from sandbox.protocol.verification import PARAM_TYPES, SUBJECT_FORMATS, ParamSpec, TemplateInfo

__all__ = [
    "RELATED_AGGREGATES",
    "Param",
    "Related",
    "RelatedSpec",
    "Renderer",
    "Template",
    "TemplateExpr",
    "load_templates",
]

RELATED_AGGREGATES = {"count": "count({c})", "count_distinct": "count(DISTINCT {c})", "sum": "sum({c})"}
"""A related aggregate's SQL, by its name in the catalog ({c}: the column, or * for count)."""
MAX_LADDER = 64
MAX_ALLOWED = 1000
_SQL_TYPE = {"int64": "BIGINT", "float64": "DOUBLE", "string": "VARCHAR", "bool": "BOOLEAN"}
_KIND = {"int64": "num", "float64": "num", "string": "str", "bool": "bool"}


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
            if r["aggregate"] not in RELATED_AGGREGATES:
                raise self.fail(f"{rkey}.aggregate", f"must be one of {', '.join(RELATED_AGGREGATES)}")
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
        r_ = Renderer(self.catalog, ds, tpl, "batch")
        try:
            for rs in tpl.related:
                if rs.where is not None:
                    rt = ds.table(rs.table)
                    assert rt is not None
                    Renderer(self.catalog, ds, tpl, "related", rt.name).bool(rs.where)
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


# -- rendering: a template expression as SQL (type-checked at load, compiled by sandbox.products.verification)


def _lit_kind(v: Scalar) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    return "num" if isinstance(v, int | float) else "str"


class Renderer:
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
