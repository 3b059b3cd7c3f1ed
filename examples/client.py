"""An analyst's session with the Python client library (`pgw_client`): what a consumer would copy and adapt.

It needs the installed package (or this repository on the path) and the analyst's certificate, key and the
gateway's CA. Run:

    python examples/client.py --target 127.0.0.1:50051 --tls-dir .state/certs --as acme-bank-analyst

(the three options default to $PGW_TARGET, $PGW_TLS_DIR and $PGW_IDENTITY).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from pathlib import Path

from pgw_client import BudgetExhausted, Client, ClientError, InvalidQuery, Result

DATASET = "registry"

QUERIES = [
    ("How many residents are in the registry?", "SELECT COUNT(*) AS residents FROM residents", 0.2),
    (
        "Average income of people born in the 1980s",
        "SELECT AVG(income) AS avg_income FROM residents WHERE birth_year BETWEEN 1980 AND 1989",
        0.3,
    ),
    (
        "Employed residents and their total income, by sex",
        "SELECT sex, COUNT(*) AS people, SUM(income) AS total_income FROM residents "
        "WHERE employed GROUP BY sex",
        0.3,
    ),
    (
        "Social-insurance contributions per month (first half of 2025)",
        "SELECT month, SUM(contribution) AS contributions FROM social_insurance "
        "WHERE month IN ('2025-01', '2025-02', '2025-03', '2025-04', '2025-05', '2025-06') "
        "GROUP BY month",
        0.3,
    ),
]


def print_result(result: Result) -> None:
    """Rows with their 95% intervals, then what this request charged."""
    for record in result.records():
        cells = []
        for column in result.columns:
            value = record[column.name]
            text = f"{value:,.1f}" if isinstance(value, float) else f"{value}"
            if column.noisy:
                text += (f"  (95% CI {record[column.name + '_lower']:,.1f} .. {record[column.name + '_upper']:,.1f},"
                         f" noise sd {record[column.name + '_std']:,.1f})")
            cells.append(f"{column.name}={text}")
        print("    " + " | ".join(cells))
    marker = " [replayed: not charged again]" if result.replayed else " [cached: not charged]" if result.cached else ""
    print(f"    charged epsilon {result.charged.epsilon:.4f}{marker}; "
          f"remaining {result.budget.remaining.epsilon:.4f} of {result.budget.budget.epsilon:g}")


def session(client: Client, purpose: str) -> int:
    """The session under one purpose of the analyst's grants; returns the exit status."""
    print(f"== datasets visible to {client.identity}")
    for d in client.datasets():
        print(f"   {d.name}: {d.description} (tables: {', '.join(t.name for t in d.tables)}; "
              f"privacy unit: {d.privacy_unit})")
    grant = next(b for b in client.budget(DATASET) if b.purpose == purpose)
    print(f"== budget on {DATASET}/{purpose}: epsilon {grant.remaining.epsilon:g} of {grant.budget.epsilon:g} "
          f"left, at most {grant.max_per_query.epsilon:g} per query")

    sql = QUERIES[1][1]
    ex = client.explain(sql, dataset=DATASET, purpose=purpose, epsilon=0.3)
    print("== explain (free): " + sql)
    for r in ex.releases:
        print(f"    {r['output']}.{r['component']}: {r['mechanism']}, scale {r['scale']:.4g}, "
              f"epsilon {r['epsilon']:.4f}, ±{r['half_width_95']:.4g} at 95%")

    first_id = str(uuid.uuid4())
    for k, (title, sql, epsilon) in enumerate(QUERIES):
        print(f"== {title}\n   {sql}")
        print_result(client.query(sql, dataset=DATASET, purpose=purpose, epsilon=epsilon,
                                  request_id=first_id if k == 0 else None))

    print("== retrying the first request with the same request id (same answer, no new charge)")
    again = client.query(QUERIES[0][1], dataset=DATASET, purpose=purpose, epsilon=QUERIES[0][2],
                         request_id=first_id)
    print_result(again)

    print("== saving the first answer's signed receipt and verifying it with the gateway's public key")
    assert again.receipt is not None
    path = again.receipt.save(Path(tempfile.mkdtemp()) / "receipt.json")
    key_id, _ = client.public_key()
    print(f"    {path}: key id {key_id}, " + ("signature valid" if client.verify_receipt(path) else "INVALID"))

    print("== a query that would release rows is refused before anything runs")
    try:
        client.query("SELECT * FROM residents", dataset=DATASET, purpose=purpose, epsilon=0.1)
        print("    unexpectedly answered")
        return 1
    except InvalidQuery as exc:
        print(f"    refused: {exc}")
    return 0


def main() -> int:
    """Connect, run the session, and turn a refusal into one line."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", help="host:port of the gateway (default $PGW_TARGET or 127.0.0.1:50051)")
    parser.add_argument("--tls-dir", help="directory with ca.crt and <identity>.crt/.key (default $PGW_TLS_DIR)")
    parser.add_argument("--as", dest="identity", help="your certificate's name (default $PGW_IDENTITY)")
    parser.add_argument("--purpose", default="credit-risk", help="the purpose of your grant on the registry")
    args = parser.parse_args()
    try:
        with Client(args.target, tls_dir=args.tls_dir, identity=args.identity) as client:
            return session(client, args.purpose)
    except BudgetExhausted as exc:
        print(f"the privacy budget is spent: {exc}\n  the budget refreshes at the start of the next period "
              "(pgw budget shows when); ask your operator for more", file=sys.stderr)
        return 1
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
