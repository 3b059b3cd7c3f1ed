"""The query corpus: every file under accept/ must analyze to a plan; every file under reject/
must be refused with exactly the reason in its `-- reason:` header.

Each file holds one query; the header lines are SQL comments and stay part of the text analyzed.
"""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import grpc
import pytest

from gateway.errors import InvalidQueryError
from gateway.products.query.sql.analyze import analyze
from gateway.products.query.sql.tree import MAX_GROUPS
from sandbox.engine.guard import check_select
from sandbox.engine.storage import sql_table_name
from sandbox.plans.compile import compile_dataset_plan
from sandbox.protocol.messages import ColumnInfo, DatasetInfo, QueryPlan, TableInfo

HERE = Path(__file__).parent
ACCEPT = sorted((HERE / "accept").glob("*.sql"))
REJECT = sorted((HERE / "reject").glob("*.sql"))
REASON = re.compile(r"-- reason: ([A-Z][A-Z0-9_]*)\n-- why: \S.*\n")

REGIONS = (
    "110000", "120000", "130000", "140000", "150000", "210000", "220000", "230000",
    "310000", "320000", "330000", "340000", "350000", "360000", "370000", "410000",
    "420000", "430000", "440000", "450000", "460000", "500000", "510000", "520000",
    "530000", "540000", "610000", "620000", "630000", "640000", "650000",
)  # fmt: skip
MONTHS = tuple(f"2025-{m:02d}" for m in range(1, 13))

REGISTRY = DatasetInfo(
    name="registry",
    privacy_unit="person_id",
    version="test",
    tables=(
        TableInfo(
            "residents",
            (
                ColumnInfo("person_id", "int64", "identifier"),
                ColumnInfo("id_number", "string", "identifier"),
                ColumnInfo("name", "string", "identifier"),
                ColumnInfo("birth_year", "int64", "public", lower=1930, upper=2007),
                ColumnInfo("sex", "string", "public", domain=("F", "M")),
                ColumnInfo("region", "string", "internal", domain=REGIONS),
                ColumnInfo("income", "int64", "sensitive", lower=0, upper=2_000_000),
                ColumnInfo("employed", "bool", "internal", domain=(False, True)),
            ),
            max_rows_per_unit=1,
        ),
        TableInfo(
            "social_insurance",
            (
                ColumnInfo("person_id", "int64", "identifier"),
                ColumnInfo("month", "string", "public", domain=MONTHS),
                ColumnInfo("contribution", "int64", "sensitive", lower=0, upper=10_000),
                ColumnInfo("employer_credit_code", "string", "identifier"),
                ColumnInfo("region", "string", "internal", domain=REGIONS),
            ),
            max_rows_per_unit=12,
        ),
        TableInfo(
            "regions",
            (
                ColumnInfo("code", "string", "public"),
                ColumnInfo("name", "string", "public"),
                ColumnInfo(
                    "macro_region", "string", "public",
                    domain=("North", "Northeast", "East", "South Central", "Southwest",
                            "Northwest"),
                ),
            ),
            max_rows_per_unit=0,
            public=True,
            unique_key="code",
        ),
    ),
)


def test_corpus_is_large_enough() -> None:
    assert len(ACCEPT) >= 170
    assert len(REJECT) >= 230


@pytest.mark.parametrize("path", ACCEPT, ids=[p.name for p in ACCEPT])
def test_accepted(path: Path) -> None:
    plan = analyze(path.read_text(encoding="utf-8"), REGISTRY)
    assert isinstance(plan, QueryPlan)
    assert plan.dataset == "registry"
    assert plan.aggregates


@pytest.fixture(scope="module")
def parser() -> duckdb.DuckDBPyConnection:
    """A data-free connection: the guard only parses."""
    return duckdb.connect()


@pytest.mark.parametrize("path", ACCEPT, ids=[p.name for p in ACCEPT])
def test_accepted_plans_compile_and_pass_the_sandbox_guard(path: Path, parser: duckdb.DuckDBPyConnection) -> None:
    """What the analyzer accepts, the sandbox runs: its compiler renders the plan and its SQL guard accepts
    every statement (the aggregate query and each quantile's candidate counts), so no accepted query can
    fail there after the charge."""
    plan = analyze(path.read_text(encoding="utf-8"), REGISTRY)
    compiled = compile_dataset_plan(plan, REGISTRY, max_cells=MAX_GROUPS)
    tables = {sql_table_name(REGISTRY.name, t.name) for t in REGISTRY.tables}
    for sql in (compiled.sql, *(q.sql for q in compiled.quantiles)):
        check_select(parser, sql, tables)


@pytest.mark.parametrize("path", REJECT, ids=[p.name for p in REJECT])
def test_rejected(path: Path) -> None:
    sql = path.read_text(encoding="utf-8")
    header = REASON.match(sql)
    assert header, f"{path.name} must start with '-- reason: <REASON>' and '-- why: <sentence>'"
    with pytest.raises(InvalidQueryError) as info:
        analyze(sql, REGISTRY)
    err = info.value
    assert err.reason == header.group(1), err.message
    assert err.code is grpc.StatusCode.INVALID_ARGUMENT
    assert err.message.strip()
    assert len(err.message) <= 300
    assert all(re.fullmatch(r"[a-z][A-Za-z0-9]*", key) for key in err.metadata)
