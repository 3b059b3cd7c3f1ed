"""The fixed workload: the same SQL text goes to every system. `kind` drives the targets: "ungrouped" and
"public_key" must be within 1.5x of plain DuckDB at 10M; `sn_public_keys` tells SmartNoise the keys are public
(censor_dims off)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ACCURACY_EPSILONS", "DATASET", "DELTA", "EPSILON", "SN_TARGET_SIZE", "WORKLOAD", "Query"]

DATASET = "registry"
EPSILON = 1.0
SN_TARGET_SIZE = 1_000_000  # where "at least 10x faster than SmartNoise" is measured (issue #3)
ACCURACY_EPSILONS = (1.0, 0.1)
DELTA = 1e-6  # for the private-key grouped count only (partition selection needs delta > 0)


@dataclass(frozen=True)
class Query:
    """One workload query; the same text goes to every system."""

    id: str
    title: str
    sql: str
    kind: str  # ungrouped | public_key | private_key | median | join | preagg
    keys: int = 0  # number of group-key columns
    delta: float = 0.0
    sn_public_keys: bool = False


WORKLOAD: tuple[Query, ...] = (
    Query("count", "COUNT(*) of residents", "SELECT COUNT(*) AS n FROM residents", "ungrouped"),
    Query("sum", "SUM(income)", "SELECT SUM(income) AS total_income FROM residents", "ungrouped"),
    Query("avg", "AVG(income)", "SELECT AVG(income) AS avg_income FROM residents", "ungrouped"),
    Query(
        "avg_by_region", "AVG(income) GROUP BY region (public key, 31 regions)",
        "SELECT region, AVG(income) AS avg_income FROM residents GROUP BY region", "public_key",
        keys=1, sn_public_keys=True,
    ),
    Query(
        "count_by_birth_year", "COUNT(*) GROUP BY birth_year (int key: public domain from its bounds)",
        "SELECT birth_year, COUNT(*) AS n FROM residents GROUP BY birth_year", "private_key",
        keys=1, delta=DELTA,
    ),
    Query(
        "count_by_region_name", "COUNT(*) GROUP BY a lookup column without a domain (DP partition selection)",
        "SELECT g.name, COUNT(*) AS n FROM residents AS r JOIN regions AS g ON r.region = g.code GROUP BY g.name",
        "private_key", keys=1, delta=DELTA,
    ),
    Query("median", "MEDIAN(income)", "SELECT MEDIAN(income) AS median_income FROM residents", "median"),
    Query(
        "join", "AVG(contribution), residents JOIN social_insurance, born before 1980",
        "SELECT AVG(s.contribution) AS avg_contribution FROM residents AS r JOIN social_insurance AS s "
        "ON r.person_id = s.person_id WHERE r.birth_year < 1980",
        "join",
    ),
    Query(
        "preagg", "AVG of per-person SUM(contribution) (pre-aggregation)",
        "SELECT AVG(total) AS avg_total FROM (SELECT person_id, SUM(contribution) AS total "
        "FROM social_insurance GROUP BY person_id) AS t",
        "preagg",
    ),
)
