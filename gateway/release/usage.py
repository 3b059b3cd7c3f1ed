"""Metering and usage reports: requests, epsilon, prices and each data owner's share, as JSON and CSV.

Every charged request (answered, failed after touching data, or charged and never completed) is
metered in the ledger row of its charge, written in the same transaction as the charge: organisation,
member, purpose, use class, dataset, data owner, epsilon (exact units), request units (the releases in
the plan) and the purpose's prices at charge time. Refunded charges (sandbox unreachable) are deleted
with their charge and cost nothing.

Price of a charge: commercial purposes `request_units x price_per_request_unit + epsilon x
price_per_epsilon`; public welfare 0. A data owner's proceeds are the prices of the charges on its
datasets; its share is its proceeds over all proceeds in that currency. Money is summed exactly in
`Decimal` and rounded half-up to cents only in the report.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from gateway.policy.periods import DELTA_UNITS, EPSILON_UNITS, rfc3339

__all__ = ["CSV_COLUMNS", "UsageReport", "UsageRow", "build_report"]

CENT = Decimal("0.01")
SHARE = Decimal("0.000001")
CSV_COLUMNS = ("organization", "member", "purpose", "use_class", "dataset", "data_owner", "requests",
               "request_units", "epsilon", "delta", "currency", "price")


@dataclass
class UsageRow:
    """Usage of one (organisation, member, purpose, dataset) in the report's range."""

    organization: str
    member: str
    purpose: str
    use_class: str
    dataset: str
    data_owner: str
    currency: str
    requests: int = 0
    request_units: int = 0
    epsilon_units: int = 0
    delta_units: int = 0
    price: Decimal = field(default_factory=Decimal)

    def as_dict(self) -> dict[str, Any]:
        """Exact, printable values (epsilon as a decimal string, price rounded to cents)."""
        return {
            "organization": self.organization, "member": self.member, "purpose": self.purpose,
            "use_class": self.use_class, "dataset": self.dataset, "data_owner": self.data_owner,
            "requests": self.requests, "request_units": self.request_units,
            "epsilon": _decimal_units(self.epsilon_units, EPSILON_UNITS),
            "delta": _decimal_units(self.delta_units, DELTA_UNITS),
            "currency": self.currency, "price": str(self.price.quantize(CENT, ROUND_HALF_UP)),
        }


@dataclass
class UsageReport:
    """A usage report for [start, end)."""

    start: float | None
    end: float | None
    rows: list[UsageRow]

    def owners(self) -> list[dict[str, Any]]:
        """Per data owner and currency: requests, epsilon, proceeds and share of all proceeds."""
        agg: dict[tuple[str, str], list[Any]] = {}
        totals: dict[str, Decimal] = {}
        for r in self.rows:
            a = agg.setdefault((r.data_owner, r.currency), [0, 0, Decimal(0)])
            a[0] += r.requests
            a[1] += r.epsilon_units
            a[2] += r.price
            totals[r.currency] = totals.get(r.currency, Decimal(0)) + r.price
        out = []
        for (owner, currency), (n, eps, proceeds) in sorted(agg.items()):
            total = totals[currency]
            share = (proceeds / total).quantize(SHARE, ROUND_HALF_UP) if total else Decimal(0)
            out.append({"data_owner": owner, "currency": currency, "requests": n,
                        "epsilon": _decimal_units(eps, EPSILON_UNITS),
                        "proceeds": str(proceeds.quantize(CENT, ROUND_HALF_UP)), "share": str(share)})
        return out

    def to_json(self) -> str:
        """The whole report as JSON (stable key order)."""
        totals: dict[str, Decimal] = {}
        for r in self.rows:
            totals[r.currency] = totals.get(r.currency, Decimal(0)) + r.price
        return json.dumps({
            "period_start": rfc3339(self.start), "period_end": rfc3339(self.end),
            "rows": [r.as_dict() for r in self.rows],
            "data_owners": self.owners(),
            "totals": {c or "-": str(v.quantize(CENT, ROUND_HALF_UP)) for c, v in sorted(totals.items())},
            "requests": sum(r.requests for r in self.rows),
            "epsilon": _decimal_units(sum(r.epsilon_units for r in self.rows), EPSILON_UNITS),
        }, indent=2, sort_keys=False)

    def to_csv(self) -> str:
        """The rows as CSV with a header line."""
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow(r.as_dict())
        return buf.getvalue()


def _decimal_units(units: int, per: int) -> str:
    d = Decimal(units) / Decimal(per)
    text = format(d.normalize(), "f")
    return text if "." in text else text + ".0" if text != "0" else "0"


def charge_price(charge: Mapping[str, Any]) -> Decimal:
    """The price of one metered charge (0 for public welfare)."""
    if charge["use_class"] != "commercial":
        return Decimal(0)
    eps = Decimal(int(charge["epsilon_units"])) / Decimal(EPSILON_UNITS)
    return (Decimal(int(charge["request_units"])) * Decimal(str(charge["price_per_request_unit"]))
            + eps * Decimal(str(charge["price_per_epsilon"])))


def build_report(charges: Iterable[Mapping[str, Any]], start: float | None, end: float | None) -> UsageReport:
    """Aggregate metered charges (from `Ledger.charges_between`) into a report."""
    rows: dict[tuple[str, ...], UsageRow] = {}
    for c in charges:
        k = (c["organization"], c["consumer"], c["purpose"], c["use_class"], c["dataset"], c["data_owner"],
             c["currency"])
        r = rows.get(k)
        if r is None:
            r = rows[k] = UsageRow(*k)
        r.requests += 1
        r.request_units += int(c["request_units"])
        r.epsilon_units += int(c["epsilon_units"])
        r.delta_units += int(c["delta_units"])
        r.price += charge_price(c)
    return UsageReport(start, end, [rows[k] for k in sorted(rows)])
