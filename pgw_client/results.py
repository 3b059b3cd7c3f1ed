"""Answers as Python values: a query's rows with native types and per-cell noise, its charge, flags and receipt;
budgets and datasets as plain records."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from pgw_client.receipts import Receipt

__all__ = ["Budget", "Column", "ColumnInfo", "Dataset", "Noise", "PrivacyLoss", "Result", "TableInfo"]

_TYPES = {0: "unspecified", 1: "int64", 2: "double", 3: "string", 4: "bool"}


@dataclass(frozen=True, slots=True)
class PrivacyLoss:
    """An amount of privacy loss: epsilon (and delta), or rho for zCDP grants with its epsilon equivalent."""

    epsilon: float = 0.0
    delta: float = 0.0
    rho: float = 0.0

    @classmethod
    def from_proto(cls, m: Any) -> PrivacyLoss:
        """From a ``privacy_gateway.v1.PrivacyLoss``."""
        return cls(m.epsilon, m.delta, m.rho)


@dataclass(frozen=True, slots=True)
class Noise:
    """The noise on one released value: its mechanism, scale, standard deviation and 95% interval."""

    mechanism: str
    scale: float
    std: float
    lower: float
    upper: float
    level: float = 0.95


@dataclass(frozen=True, slots=True)
class Column:
    """A result column: its name, type (int64, double, string, bool), and whether its values are noisy."""

    name: str
    type: str
    noisy: bool
    aggregate: str = ""


@dataclass(frozen=True, slots=True)
class Result:
    """A query's answer.

    Attributes:
        columns: The result columns.
        rows: One tuple per row, native Python values (int, float, str, bool, None).
        noise: Per row, per column: the `Noise` of a noisy cell, None for a group key or exact value.
        charged: What this request charged: zero for a replay (same request id) or a cached release.
        original_cost: What the release cost when it was first computed (equal to ``charged`` for a fresh one).
        replayed: The gateway returned its stored answer to an earlier request with this request id.
        cached: The gateway answered from an earlier release of the same query (no charge).
        request_id: The request id (the client generates one when none is given).
        budget: The grant's budget status after this request.
        receipt: The signed receipt (``receipt.save(path)``, ``receipt.verify(public_key_pem)``).
        releases: Per released component: output, component, mechanism, sensitivity, scale, epsilon, ±95%.
    """

    columns: tuple[Column, ...]
    rows: tuple[tuple[Any, ...], ...]
    noise: tuple[tuple[Noise | None, ...], ...]
    charged: PrivacyLoss
    original_cost: PrivacyLoss
    replayed: bool
    cached: bool
    request_id: str
    dataset_version: str
    budget: Budget
    receipt: Receipt | None
    releases: tuple[dict[str, Any], ...] = ()

    @property
    def column_names(self) -> list[str]:
        """The column names, in order."""
        return [c.name for c in self.columns]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """The rows as dicts keyed by column name."""
        names = self.column_names
        return (dict(zip(names, row, strict=True)) for row in self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def records(self) -> list[dict[str, Any]]:
        """One dict per row: every column's value and, for noisy columns, ``<name>_lower``, ``<name>_upper``
        (the 95% interval) and ``<name>_std`` (the noise standard deviation)."""
        out = []
        for row, noise in zip(self.rows, self.noise, strict=True):
            rec: dict[str, Any] = {}
            for col, value, n in zip(self.columns, row, noise, strict=True):
                rec[col.name] = value
                if col.noisy:
                    rec[f"{col.name}_lower"] = n.lower if n else None
                    rec[f"{col.name}_upper"] = n.upper if n else None
                    rec[f"{col.name}_std"] = n.std if n else None
            out.append(rec)
        return out

    def to_json_obj(self) -> dict[str, Any]:
        """The answer as plain JSON values (what ``pgw query --json`` prints): ``columns``; ``rows`` as
        `records` (numbers as numbers; each noisy column followed by ``_lower``, ``_upper`` and ``_std``);
        ``charged`` (this request) and ``original_cost``; the ``cached`` and ``replayed`` flags; ``request_id``,
        ``dataset_version``, ``budget``, ``releases`` and the ``receipt`` as `Receipt.save` writes it (so
        ``pgw receipt verify`` reads the whole output)."""
        return {
            "request_id": self.request_id,
            "dataset_version": self.dataset_version,
            "columns": [asdict(c) for c in self.columns],
            "rows": self.records(),
            "charged": asdict(self.charged),
            "original_cost": asdict(self.original_cost),
            "cached": self.cached,
            "replayed": self.replayed,
            "budget": asdict(self.budget),
            "releases": [dict(r) for r in self.releases],
            "receipt": self.receipt.to_json() if self.receipt is not None else None,
        }

    def _flat_columns(self) -> list[tuple[str, str]]:
        cols = []
        for c in self.columns:
            cols.append((c.name, c.type))
            if c.noisy:
                cols += [(f"{c.name}_lower", "double"), (f"{c.name}_upper", "double"), (f"{c.name}_std", "double")]
        return cols

    def to_arrow(self) -> Any:
        """A ``pyarrow.Table``: one row per group, each noisy column followed by its ``_lower``, ``_upper`` and
        ``_std`` columns; int64 columns stay int64."""
        import pyarrow as pa

        kinds = {"int64": pa.int64(), "double": pa.float64(), "string": pa.string(), "bool": pa.bool_()}
        records = self.records()
        arrays, names = [], []
        for name, kind in self._flat_columns():
            arrays.append(pa.array([r[name] for r in records], type=kinds.get(kind, pa.string())))
            names.append(name)
        return pa.Table.from_arrays(arrays, names=names)

    def to_pandas(self) -> Any:
        """A ``pandas.DataFrame`` (needs pandas: ``pip install 'privacy-gateway[pandas]'``)."""
        try:
            import pandas  # type: ignore[import-untyped]  # noqa: F401
        except ImportError as exc:
            raise ImportError("Result.to_pandas needs pandas: pip install pandas "
                              "(or use Result.to_arrow(), .records() or .rows)") from exc
        return self.to_arrow().to_pandas()

    def to_polars(self) -> Any:
        """A ``polars.DataFrame`` (needs polars)."""
        try:
            import polars  # type: ignore[import-not-found]
        except ImportError as exc:
            raise ImportError("Result.to_polars needs polars: pip install polars "
                              "(or use Result.to_arrow(), .records() or .rows)") from exc
        return polars.from_arrow(self.to_arrow())


@dataclass(frozen=True, slots=True)
class Budget:
    """One grant's budget: total, spent and remaining this period, the per-query maximum."""

    dataset: str
    purpose: str
    privacy_definition: str
    budget: PrivacyLoss
    spent: PrivacyLoss
    remaining: PrivacyLoss
    max_per_query: PrivacyLoss
    period: str = ""
    refreshes_at: str = ""
    organization: str = ""
    limiting_level: str = ""

    @classmethod
    def from_proto(cls, m: Any) -> Budget:
        """From a ``privacy_gateway.v1.BudgetStatus``."""
        return cls(m.dataset, m.purpose, m.privacy_definition, PrivacyLoss.from_proto(m.budget),
                   PrivacyLoss.from_proto(m.spent), PrivacyLoss.from_proto(m.remaining),
                   PrivacyLoss.from_proto(m.max_per_query), m.period, m.refreshes_at, m.organization,
                   m.limiting_level)


@dataclass(frozen=True, slots=True)
class ColumnInfo:
    """A catalog column: type, grade, bounds, domain and description."""

    name: str
    type: str
    grade: str
    lower: float | None
    upper: float | None
    domain: tuple[str, ...]
    description: str
    groupable: bool
    summable: bool


@dataclass(frozen=True, slots=True)
class TableInfo:
    """A catalog table; ``max_rows_per_unit`` is 0 for a public lookup table."""

    name: str
    max_rows_per_unit: int
    columns: tuple[ColumnInfo, ...]


@dataclass(frozen=True, slots=True)
class Dataset:
    """A dataset the caller may query."""

    name: str
    description: str
    owner: str
    privacy_unit: str
    version: str
    purposes: tuple[str, ...]
    tables: tuple[TableInfo, ...] = field(default=())

    @classmethod
    def from_proto(cls, d: Any) -> Dataset:
        """From a ``privacy_gateway.v1.Dataset``."""
        tables = tuple(TableInfo(t.name, t.max_rows_per_unit, tuple(
            ColumnInfo(c.name, _TYPES.get(c.type, "unspecified"), c.grade, c.lower if c.has_bounds else None,
                       c.upper if c.has_bounds else None, tuple(c.domain), c.description, c.groupable, c.summable)
            for c in t.columns)) for t in d.tables)
        return cls(d.name, d.description, d.owner, d.privacy_unit, d.version, tuple(d.purposes), tables)


def result_from_proto(resp: Any) -> Result:
    """A `Result` from a ``RunQueryResponse``."""
    columns = tuple(Column(c.name, _TYPES.get(c.type, "unspecified"), c.noisy, c.aggregate) for c in resp.columns)
    rows, noise = [], []
    for row in resp.rows:
        values: list[Any] = []
        noises: list[Noise | None] = []
        for cell in row.cells:
            kind = cell.WhichOneof("value")
            values.append(None if kind in (None, "null_value") else getattr(cell, kind))
            if cell.HasField("confidence_interval"):
                ci = cell.confidence_interval
                noises.append(Noise(cell.noise.mechanism, cell.noise.scale, cell.noise.stddev, ci.lower, ci.upper,
                                    ci.level or 0.95))
            else:
                noises.append(None)
        rows.append(tuple(values))
        noise.append(tuple(noises))
    cost = PrivacyLoss.from_proto(resp.privacy_cost)
    free = resp.replayed or resp.cached
    releases = tuple({"output": r.output, "component": r.component, "mechanism": r.mechanism,
                      "sensitivity": r.sensitivity, "scale": r.scale, "epsilon": r.privacy_loss.epsilon,
                      "rho": r.privacy_loss.rho, "half_width_95": r.half_width_95} for r in resp.plan.releases)
    receipt = Receipt.from_proto(resp.receipt) if resp.HasField("receipt") else None
    return Result(columns, tuple(rows), tuple(noise), PrivacyLoss() if free else cost, cost, resp.replayed,
                  resp.cached, resp.request_id, resp.dataset_version, Budget.from_proto(resp.budget), receipt,
                  releases)
