"""The accuracy table's queries (`examples.bench.peers`): each as the gateway and the peers ask it, with
the OpenDP worker's spec (`examples/bench/opendp_worker.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EPSILON = 1.0
DELTA = 1e-6  # where keys are selected privately (examples.bench's SmartNoise worker uses the same)
INCOME = (0, 2_000_000)  # residents.income in policies/catalog.toml
CONTRIBUTION = (0, 10_000)  # social_insurance.contribution
PRIVATE_KEYS = "FROM residents AS r JOIN regions AS g ON r.region = g.code GROUP BY g.name"


@dataclass(frozen=True)
class Case:
    """One query, as each system asks it. `gateway_sql` and `peer_sql` answer the same question (with
    private keys the gateway groups by the region's name through the public lookup table, a key without a
    public domain; the peers group by the region code as a private key: code and name are one to one)."""

    id: str
    title: str
    kind: str  # count | sum | avg | count_distinct
    gateway_sql: str
    peer_sql: str | None  # None: no peer supports it
    keys: int = 0
    private_keys: bool = False
    table: str = "residents"
    bounds: tuple[int, int] | None = None
    opendp: dict[str, Any] | None = None  # the worker's spec (see the worker's docstring)
    note: str = ""

    @property
    def delta(self) -> float:
        return DELTA if self.private_keys else 0.0


def _od(table: str, aggs: list[dict[str, Any]], *, contributions: int = 1, group_by: str | None = None,
        public_keys: bool = False, private: bool = False, public_length: bool = False) -> dict[str, Any]:
    return {"table": table, "contributions": contributions, "epsilon": EPSILON, "delta": DELTA if private else 0.0,
            "group_by": group_by, "public_keys": public_keys, "public_length": public_length, "aggs": aggs}


_INCOME_MEAN = {"kind": "mean", "column": "income", "bounds": list(INCOME)}
CASES: tuple[Case, ...] = (
    Case("count", "COUNT(*)", "count", "SELECT COUNT(*) AS n FROM residents",
         "SELECT COUNT(*) AS n FROM residents", opendp=_od("residents", [{"kind": "len"}])),
    Case("sum", "SUM(income)", "sum", "SELECT SUM(income) AS s FROM residents",
         "SELECT SUM(income) AS s FROM residents", bounds=INCOME,
         opendp=_od("residents", [{"kind": "sum", "column": "income", "bounds": list(INCOME)}])),
    Case("avg", "AVG(income)", "avg", "SELECT AVG(income) AS a FROM residents",
         "SELECT AVG(income) AS a FROM residents", bounds=INCOME, opendp=_od("residents", [_INCOME_MEAN])),
    Case("count_by_region", "COUNT(*) by region, public keys", "count",
         "SELECT region, COUNT(*) AS n FROM residents GROUP BY region",
         "SELECT region, COUNT(*) AS n FROM residents GROUP BY region", keys=1,
         opendp=_od("residents", [{"kind": "len"}], group_by="region", public_keys=True)),
    Case("avg_by_region", "AVG(income) by region, public keys", "avg",
         "SELECT region, AVG(income) AS a FROM residents GROUP BY region",
         "SELECT region, AVG(income) AS a FROM residents GROUP BY region", keys=1, bounds=INCOME,
         opendp=_od("residents", [_INCOME_MEAN], group_by="region", public_keys=True)),
    Case("count_by_region_private", "COUNT(*) by region, keys selected privately", "count",
         f"SELECT g.name, COUNT(*) AS n {PRIVATE_KEYS}",
         "SELECT region, COUNT(*) AS n FROM residents GROUP BY region", keys=1, private_keys=True,
         opendp=_od("residents", [{"kind": "len"}], group_by="region", private=True)),
    Case("avg_by_region_private", "AVG(income) by region, keys selected privately", "avg",
         f"SELECT g.name, AVG(r.income) AS a {PRIVATE_KEYS}",
         "SELECT region, AVG(income) AS a FROM residents GROUP BY region", keys=1, private_keys=True,
         bounds=INCOME, opendp=_od("residents", [{"kind": "len"}, _INCOME_MEAN], group_by="region", private=True),
         note="OpenDP releases keys only with a `dp.len()` in the same query, so its query also releases a count"),
    Case("sum_multi_row", "SUM(contribution), up to 12 rows per person", "sum",
         "SELECT SUM(contribution) AS s FROM social_insurance",
         "SELECT SUM(contribution) AS s FROM social_insurance", table="social_insurance", bounds=CONTRIBUTION,
         opendp=_od("social_insurance", [{"kind": "sum", "column": "contribution", "bounds": list(CONTRIBUTION)}],
                    contributions=12)),
)
# Not comparable (kept out of the verdict): OpenDP told the row count is public (`invariant="lengths"`),
# which halves its sum's noise; and a join no peer can express.
EXTRA: tuple[Case, ...] = (
    Case("sum_multi_row_public_length", "SUM(contribution), OpenDP told the row count is public", "sum",
         "SELECT SUM(contribution) AS s FROM social_insurance", None, table="social_insurance",
         bounds=CONTRIBUTION,
         opendp=_od("social_insurance", [{"kind": "sum", "column": "contribution", "bounds": list(CONTRIBUTION)}],
                    contributions=12, public_length=True)),
    Case("distinct_by_region_join", "COUNT(DISTINCT person) by region over residents JOIN social_insurance",
         "count", "SELECT r.region, COUNT(DISTINCT r.person_id) AS n FROM residents AS r JOIN social_insurance "
         "AS s ON r.person_id = s.person_id GROUP BY r.region", None, keys=1),
)
