"""The data owner's catalog: which files hold which tables, and what may be said about them.

The sandbox reads this TOML file itself (the gateway never supplies it). Every privacy-relevant
number (`max_rows_per_unit`, bounds, domains) must be written down: nothing has a default. Any
problem raises `ConfigError(file, dotted.key, problem)`.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, cast

from sandbox.errors import ConfigError
from sandbox.owner_caps import OwnerCap, SubjectCap, parse_owner_cap, parse_subject_caps
from sandbox.plans.grades import DEFAULT_GRADE_RULES, USES
from sandbox.protocol.catalog import CatalogInfo, ColumnInfo, DatasetInfo, Grade, TableInfo
from sandbox.protocol.plan import ColumnType, Scalar

SCHEMA = "privacy_gateway.catalog.v1"
COLUMN_TYPES: tuple[ColumnType, ...] = ("int64", "float64", "string", "bool")
GRADES: tuple[Grade, ...] = ("public", "internal", "sensitive", "identifier")
MAX_DOMAIN = 10_000
MAX_INT_BOUND = 2**53  # integer bounds and sums stay exact on OpenDP's i64 path
NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
RESERVED_PREFIX = "__pgw_"


@dataclass(frozen=True, slots=True)
class TableSpec:
    """One table: its resolved file and its public description."""

    name: str
    file: Path
    key: str  # dotted catalog key of the table, for error messages
    info: TableInfo


@dataclass(frozen=True, slots=True)
class DatasetSpec:
    """One dataset: its privacy unit and tables (the data version is computed at load)."""

    name: str
    privacy_unit: str
    description: str
    owner: str
    tables: tuple[TableSpec, ...]
    cap: OwnerCap | None = None  # [datasets.X.caps] (sandbox.owner_caps)
    subject_caps: tuple[SubjectCap, ...] = ()  # per-subject verification caps, by template
    published: bool = False  # [datasets.X.transparency] publish: its aggregate use is public

    def subject_cap(self, template: str) -> SubjectCap | None:
        """The owner's per-subject cap on checks with `template`, or None."""
        return next((c for c in self.subject_caps if c.template == template), None)

    def table(self, name: str) -> TableSpec | None:
        """Return the table called `name`, or None."""
        return next((t for t in self.tables if t.name == name), None)

    def public(self, version: str) -> DatasetInfo:
        """The public description of this dataset at data version `version`."""
        return DatasetInfo(
            name=self.name,
            privacy_unit=self.privacy_unit,
            tables=tuple(t.info for t in self.tables),
            version=version,
            description=self.description,
            owner=self.owner,
            caps=self.cap,
            subject_caps=self.subject_caps,
            published=self.published,
        )


@dataclass(frozen=True, slots=True)
class Catalog:
    """The whole catalog file, validated."""

    path: Path
    data_dir: Path
    datasets: tuple[DatasetSpec, ...]
    # issue-gov: what each column grade allows ([grades.X] allows = [...]); built-in rules if absent
    grades: Mapping[str, frozenset[str]] = field(default_factory=lambda: DEFAULT_GRADE_RULES)
    # The file's data-defining part: everything but the owner's reloadable settings (`RELOADABLE`).
    defining: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def dataset(self, name: str) -> DatasetSpec | None:
        """Return the dataset called `name`, or None."""
        return next((d for d in self.datasets if d.name == name), None)

    def public(self, versions: Mapping[str, str]) -> CatalogInfo:
        """The public part; each dataset carries its data version from `versions` (by name)."""
        grades = tuple((g, tuple(sorted(self.grades[g]))) for g in GRADES if g in self.grades)
        return CatalogInfo(tuple(d.public(versions[d.name]) for d in self.datasets), grades)

    def reload_problem(self, fresh: Catalog) -> str | None:
        """Why `fresh` cannot replace this catalog without a restart (a data-defining part differs), or None.

        Only the owner's settings in `RELOADABLE` may change: caps, grades and verification caps. Tables,
        files, columns, types, bounds, domains, units, templates and everything else must be identical.
        """
        if fresh.data_dir != self.data_dir:
            return "data_dir differs"
        where = _first_difference(self.defining, fresh.defining, "")
        return None if where is None else f"{where or 'the file'} differs (a data-defining part: restart needed)"


class _Reader:
    """Validation helpers that know the file name for error messages."""

    def __init__(self, file: Path) -> None:
        self.file = str(file)

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.file, key, problem)

    def table(self, d: Mapping[str, Any], key: str, required: set[str], optional: set[str]) -> None:
        if not isinstance(d, dict):
            raise self.fail(key, "must be a table")
        for k in sorted(set(d) - required - optional):
            raise self.fail(f"{key}.{k}" if key else k, "unknown key")
        for k in sorted(required - set(d)):
            raise self.fail(f"{key}.{k}" if key else k, "missing (required, no default)")

    def string(self, d: Mapping[str, Any], k: str, key: str, default: str | None = None) -> str:
        v = d.get(k, default)
        if not isinstance(v, str):
            raise self.fail(key, "must be a string")
        return v

    def name(self, n: str, key: str) -> str:
        if not n or len(n) > 63 or not set(n) <= NAME_CHARS or "__" in n or n[0].isdigit():
            raise self.fail(key, "must be 1-63 letters, digits or _ (no '__', not digit-first)")
        return n


def load_catalog(path: Path, data_dir: Path | None = None) -> Catalog:
    """Read and validate a catalog file.

    Args:
        path: the TOML file.
        data_dir: overrides the file's `data_dir` (which is relative to the catalog file).

    Raises:
        ConfigError: the file cannot be read or is invalid (names file, dotted key, problem).
    """
    r = _Reader(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise r.fail("(file)", f"cannot read: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise r.fail("(file)", f"not valid TOML: {exc}") from exc
    r.table(raw, "", {"schema", "datasets"}, {"data_dir", "grades"})
    if raw["schema"] != SCHEMA:
        raise r.fail("schema", f"must be {SCHEMA!r}")
    if data_dir is None:
        if "data_dir" not in raw:
            raise r.fail("data_dir", "missing (or pass --data-dir)")
        data_dir = path.parent / r.string(raw, "data_dir", "data_dir")
    datasets = raw["datasets"]
    r.table(datasets, "datasets", set(), set(datasets) if isinstance(datasets, dict) else set())
    if not datasets:
        raise r.fail("datasets", "at least one dataset is required")
    specs = tuple(
        _dataset(r, r.name(n, f"datasets.{n}"), d, data_dir.resolve()) for n, d in datasets.items()
    )
    grades = _grades(r, raw["grades"]) if "grades" in raw else DEFAULT_GRADE_RULES
    return Catalog(path=path, data_dir=data_dir.resolve(), datasets=specs, grades=grades,
                   defining=_defining(raw))


# What `Engine.reload` may change without a restart (the data owner's settings, not the data's definition):
# the whole [grades] table, each dataset's [caps] and [verification_caps], and each verification template's
# max_checks_per_subject_per_period.
RELOADABLE = ("grades", "datasets.*.caps", "datasets.*.verification_caps",
              "datasets.*.verifications.*.max_checks_per_subject_per_period")


def _defining(raw: Mapping[str, Any]) -> dict[str, Any]:
    """`raw` without the `RELOADABLE` keys."""
    out = {k: v for k, v in raw.items() if k != "grades"}
    datasets = {}
    for name, d in (raw.get("datasets") or {}).items():
        if not isinstance(d, dict):
            datasets[name] = d
            continue
        d = {k: v for k, v in d.items() if k not in ("caps", "verification_caps")}
        if isinstance(d.get("verifications"), dict):
            d["verifications"] = {
                t: ({k: v for k, v in body.items() if k != "max_checks_per_subject_per_period"}
                    if isinstance(body, dict) else body)
                for t, body in d["verifications"].items()}
        datasets[name] = d
    out["datasets"] = datasets
    return out


def _first_difference(a: Any, b: Any, key: str) -> str | None:
    """The dotted key of the first difference between two TOML values, or None if equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            sub = f"{key}.{k}" if key else str(k)
            if k not in a or k not in b:
                return sub
            found = _first_difference(a[k], b[k], sub)
            if found is not None:
                return found
        return None
    if type(a) is not type(b) or a != b:
        return key
    return None


# -- the data owner's grade rules -------------------------------------------------------------------


def _grades(r: _Reader, g: Any) -> dict[str, frozenset[str]]:
    r.table(g, "grades", set(GRADES), set())
    rules: dict[str, frozenset[str]] = {}
    for grade in GRADES:
        body = g[grade]
        r.table(body, f"grades.{grade}", {"allows"}, set())
        allows = body["allows"]
        if not isinstance(allows, list) or any(a not in USES for a in allows):
            raise r.fail(f"grades.{grade}.allows", f"must be a list of {', '.join(USES)}")
        if grade == "identifier" and allows:
            raise r.fail("grades.identifier.allows", "must be empty: identifiers never appear in a query")
        rules[grade] = frozenset(allows)
    return rules


def _dataset(r: _Reader, name: str, d: Any, data_dir: Path) -> DatasetSpec:
    key = f"datasets.{name}"
    # `verifications`: templates, validated by sandbox.products.verification (which reads this file itself).
    r.table(d, key, {"privacy_unit", "tables"},
            {"description", "owner", "caps", "verifications", "verification_caps", "transparency"})
    unit = r.string(d, "privacy_unit", f"{key}.privacy_unit")
    tables = d["tables"]
    r.table(tables, f"{key}.tables", set(), set(tables) if isinstance(tables, dict) else set())
    if not tables:
        raise r.fail(f"{key}.tables", "at least one table is required")
    specs = []
    unit_type: tuple[str, str] | None = None  # (type, table) of the first private table's unit column
    for tname, t in tables.items():
        tkey = f"{key}.tables.{r.name(tname, f'{key}.tables.{tname}')}"
        spec = _table(r, tname, t, tkey, data_dir)
        if spec.info.public:
            if spec.info.column(unit) is not None:
                raise r.fail(f"{tkey}.public", f"a public table must not hold the unit {unit!r}")
            specs.append(spec)
            continue
        ucol = spec.info.column(unit)
        if ucol is None:
            raise r.fail(f"{key}.privacy_unit", f"{unit!r} is not a column of table {tname!r}")
        # Unit joins and semi-joins compare the unit columns of two tables: with different types the
        # engine would cast one to the other and fail on some values only, an error that depends on data.
        if unit_type is None:
            unit_type = (ucol.type, tname)
        elif ucol.type != unit_type[0]:
            raise r.fail(
                f"{tkey}.columns.{unit}.type",
                f"the privacy unit {unit!r} is {ucol.type} here but {unit_type[0]} in table "
                f"{unit_type[1]!r}; every table must declare it with the same type",
            )
        specs.append(spec)
    return DatasetSpec(
        name=name,
        privacy_unit=unit,
        description=r.string(d, "description", f"{key}.description", ""),
        owner=r.string(d, "owner", f"{key}.owner", ""),
        tables=tuple(specs),
        cap=parse_owner_cap(r.file, f"{key}.caps", d["caps"]) if "caps" in d else None,
        subject_caps=parse_subject_caps(r.file, key, d, _templates(r, d, key)),
        published=_published(r, d, key),
    )


def _published(r: _Reader, d: Mapping[str, Any], key: str) -> bool:
    """`[datasets.X.transparency] publish = true|false` (default false): the owner's choice to publish the
    dataset's aggregate use (requests and privacy loss per month and purpose; never per consumer)."""
    t = d.get("transparency", {})
    r.table(t, f"{key}.transparency", set(), {"publish"})
    publish = t.get("publish", False)
    if not isinstance(publish, bool):
        raise r.fail(f"{key}.transparency.publish", "must be true or false")
    return publish


def _templates(r: _Reader, d: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """The dataset's verification templates as written (validated by sandbox.products.verification)."""
    v = d.get("verifications", {})
    if not isinstance(v, dict):
        raise r.fail(f"{key}.verifications", "must be a table")
    return v


def _table(r: _Reader, name: str, t: Any, key: str, data_dir: Path) -> TableSpec:
    public = t.get("public", False) if isinstance(t, dict) else False
    if not isinstance(public, bool):
        raise r.fail(f"{key}.public", "must be true or false")
    if public:
        # A public lookup table: no privacy unit, not truncated, joined only on its unique key.
        r.table(t, key, {"file", "columns", "public", "unique_key"}, set())
    else:
        r.table(t, key, {"file", "max_rows_per_unit", "columns"}, {"public"})
    file = r.string(t, "file", f"{key}.file")
    rel = PurePosixPath(file)
    if rel.is_absolute() or ".." in rel.parts or rel.suffix.lower() not in (".parquet", ".csv"):
        raise r.fail(f"{key}.file", "must be a relative .parquet or .csv path inside data_dir")
    k = 0 if public else t["max_rows_per_unit"]
    if not public and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise r.fail(f"{key}.max_rows_per_unit", "must be an integer >= 1")
    cols = t["columns"]
    r.table(cols, f"{key}.columns", set(), set(cols) if isinstance(cols, dict) else set())
    if not cols:
        raise r.fail(f"{key}.columns", "at least one column is required")
    infos = tuple(_column(r, c, spec, f"{key}.columns.{c}") for c, spec in cols.items())
    unique_key = None
    if public:
        unique_key = r.string(t, "unique_key", f"{key}.unique_key")
        ucol = next((c for c in infos if c.name == unique_key), None)
        if ucol is None:
            raise r.fail(f"{key}.unique_key", f"{unique_key!r} is not a column of the table")
        if ucol.grade == "identifier":
            raise r.fail(f"{key}.unique_key", "the unique key must not be an identifier")
    info = TableInfo(
        name=name, columns=infos, max_rows_per_unit=k, public=public, unique_key=unique_key
    )
    return TableSpec(name=name, file=data_dir / rel, key=key, info=info)


def _column(r: _Reader, name: str, c: Any, key: str) -> ColumnInfo:
    if not name or len(name) > 255 or any(ord(ch) < 32 for ch in name):
        raise r.fail(key, "column name must be 1-255 printable characters")
    if name.startswith(RESERVED_PREFIX):
        raise r.fail(key, f"column names starting with {RESERVED_PREFIX!r} are reserved")
    r.table(c, key, {"type", "grade"}, {"lower", "upper", "domain", "description"})
    typ = c["type"]
    if typ not in COLUMN_TYPES:
        raise r.fail(f"{key}.type", f"must be one of {', '.join(COLUMN_TYPES)}")
    grade = c["grade"]
    if grade not in GRADES:
        raise r.fail(f"{key}.grade", f"must be one of {', '.join(GRADES)}")
    lower, upper = _bounds(r, c, typ, key)
    domain = _domain(r, c["domain"], typ, f"{key}.domain") if "domain" in c else None
    return ColumnInfo(
        name=name,
        type=cast(ColumnType, typ),
        grade=cast(Grade, grade),
        lower=lower,
        upper=upper,
        domain=domain,
        description=r.string(c, "description", f"{key}.description", ""),
    )


def _bounds(
    r: _Reader, c: Mapping[str, Any], typ: str, key: str
) -> tuple[float | None, float | None]:
    if ("lower" in c) != ("upper" in c):
        missing = "upper" if "lower" in c else "lower"
        raise r.fail(f"{key}.{missing}", "lower and upper must be given together")
    if "lower" not in c:
        return None, None
    out: list[float] = []
    for k in ("lower", "upper"):
        v = c[k]
        if typ not in ("int64", "float64"):
            raise r.fail(f"{key}.{k}", f"bounds apply only to numeric columns, not {typ}")
        if typ == "int64" and (isinstance(v, bool) or not isinstance(v, int)):
            raise r.fail(f"{key}.{k}", "must be an integer for an int64 column")
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise r.fail(f"{key}.{k}", "must be a finite number")
        if abs(v) > MAX_INT_BOUND:
            raise r.fail(f"{key}.{k}", f"magnitude must be at most 2**53 ({MAX_INT_BOUND})")
        out.append(v)
    if out[0] > out[1]:
        raise r.fail(f"{key}.lower", "must not exceed upper")
    return out[0], out[1]


def _domain(r: _Reader, dom: Any, typ: str, key: str) -> tuple[Scalar, ...]:
    if not isinstance(dom, list) or not dom:
        raise r.fail(key, "must be a non-empty list")
    if len(dom) > MAX_DOMAIN:
        raise r.fail(key, f"at most {MAX_DOMAIN} values")
    values: list[Scalar] = []
    for i, v in enumerate(dom):
        ok = {
            "int64": isinstance(v, int) and not isinstance(v, bool) and abs(v) < 2**63,
            "float64": isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
            "string": isinstance(v, str) and "\x00" not in v,
            "bool": isinstance(v, bool),
        }[typ]
        if not ok:
            raise r.fail(f"{key}[{i}]", f"{v!r} is not a valid {typ} value")
        values.append(float(v) if typ == "float64" else v)
    if len(set(values)) != len(values):
        raise r.fail(key, "values must be distinct")
    return tuple(values)
