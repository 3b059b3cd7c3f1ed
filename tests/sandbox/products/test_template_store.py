"""Verification templates' tables in the on-disk store (real DuckDB, real files): built into the store before the
lock-down with the data tables, answered from there exactly as the in-memory build answers, reused on restart,
part of the store's key, and built by spilling when they do not fit the memory limit.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from gateway.exampledata.generate import generate
from gateway.exampledata.identifiers import resident_id_check_char
from sandbox.catalog import load_catalog
from sandbox.engine.disk_store import store_key
from sandbox.engine.engine import Engine
from sandbox.engine.limits import Limits
from sandbox.engine.storage import DerivedTable
from sandbox.products.verification import Verifier, template_tables
from sandbox.protocol.verification import VerifyClaimsRequest, VerifyClaimsResult
from tests.helpers import PEOPLE

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
KEY = b"k" * 32
SALT = "fixed-salt"


def _tables_in(engine: Engine, database: str) -> set[str]:
    rows = engine._con.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [database]).fetchall()
    return {r[0] for r in rows}


def _claims(data: Path) -> tuple[list[str], list[str]]:
    """Subjects (20 residents of the data and 2 valid ids of nobody) and, for each, a name (right or wrong)."""
    con = duckdb.connect()
    rows = con.execute(f"SELECT id_number, name FROM '{data / 'residents.parquet'}' ORDER BY id_number LIMIT 20"
                       ).fetchall()
    con.close()
    subjects = [r[0] for r in rows] + ["11010119900101" + "999" + resident_id_check_char("11010119900101999"),
                                       "11010119800101" + "998" + resident_id_check_char("11010119800101998")]
    names = [r[1] if i % 3 else "Nobody" for i, r in enumerate(rows)] + ["Nobody", "Nobody"]
    return subjects, names


def _answers(verifier: Verifier, subjects: list[str], names: list[str], tag: str) -> list[VerifyClaimsResult]:
    out = []
    requests = [
        VerifyClaimsRequest(f"{tag}-1", "registry", "identity_match", tuple(subjects), (("name", tuple(names)),)),
        VerifyClaimsRequest(f"{tag}-2", "registry", "insured_months_at_least", tuple(subjects),
                            (("months", tuple([3, 6, 12] * 8)[: len(subjects)]),)),
        VerifyClaimsRequest(f"{tag}-3", "registry", "identity_match", (subjects[1],), (("name", (names[1],)),)),
    ]
    for req in requests:
        reply = verifier.verify(req)
        assert isinstance(reply, VerifyClaimsResult), reply
        out.append(reply)
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tpldata")
    generate(d, PEOPLE, seed=11)
    return d


def test_template_tables_live_in_the_store_answer_alike_and_are_reused_on_restart(
    data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """The disk engine's store holds every template's table; the verifier builds nothing on the locked
    connection and answers exactly as the in-memory build does (same salt); a restart on the same data reuses
    the store file (no build, same file) and answers the same again."""
    catalog = load_catalog(ROOT / "policies" / "catalog.toml", data_dir)
    derived = template_tables(catalog)
    names = {d.name for d in derived}
    assert len(names) == 4 and all(n.startswith("__pgw_v_") for n in names)
    subjects, claimed = _claims(data_dir)

    memory = Engine(catalog, Limits(), truncation_salt=SALT, version_key=KEY, derived=derived)
    assert memory.derived_tables == frozenset()
    in_memory = Verifier.for_engine(memory)
    assert _tables_in(memory, "memory") == names  # memory mode: built on the locked connection, as before
    expected = _answers(in_memory, subjects, claimed, "m")
    assert {o for r in expected for o in r.outcomes} == {0, 1}  # both outcomes occur: the comparison can fail

    store = tmp_path / "tables"
    caplog.set_level(logging.INFO, logger="sandbox")
    disk = Engine(catalog, Limits(), truncation_salt=SALT, version_key=KEY, store_dir=store, derived=derived)
    assert "built the on-disk store" in caplog.text
    assert disk.derived_tables == names
    assert names <= _tables_in(disk, "pgw_store")
    assert names.isdisjoint(disk.row_counts)  # not tables a query plan may name
    on_disk = Verifier.for_engine(disk)
    assert _tables_in(disk, "memory") == set()  # nothing built after the lock-down
    assert disk.verify()
    assert _answers(on_disk, subjects, claimed, "d") == expected

    (db,) = store.glob("*.duckdb")
    before = (db.stat().st_ino, db.stat().st_mtime_ns)
    caplog.clear()
    again = Engine(catalog, Limits(), truncation_salt=SALT, version_key=KEY, store_dir=store, derived=derived)
    assert "built the on-disk store" not in caplog.text
    assert "derived tables" not in caplog.text
    assert [p.name for p in store.glob("*.duckdb")] == [db.name]
    assert (db.stat().st_ino, db.stat().st_mtime_ns) == before
    assert _answers(Verifier.for_engine(again), subjects, claimed, "r") == expected
    assert _tables_in(again, "memory") == set()


def test_the_templates_sql_is_part_of_the_store_key(data_dir: Path) -> None:
    """A changed template (another table SQL) names another store file, so a stale template table is never
    reused; the same templates name the same file."""
    catalog = load_catalog(ROOT / "policies" / "catalog.toml", data_dir)
    derived = template_tables(catalog)
    digests = {t.key: b"\x00" * 32 for ds in catalog.datasets for t in ds.tables}
    same = store_key(catalog, digests, KEY, SALT, derived)
    assert same == store_key(catalog, digests, KEY, SALT, template_tables(catalog))
    changed = (DerivedTable(derived[0].name, derived[0].select.replace("IS NOT NULL", "IS NOT NULL AND true")),
               *derived[1:])
    assert same != store_key(catalog, digests, KEY, SALT, changed)
    assert same != store_key(catalog, digests, KEY, SALT)


# -- a template table larger than the memory limit ------------------------------------------------------

_CATALOG = """
schema = "privacy_gateway.catalog.v1"
data_dir = "."

[datasets.big]
privacy_unit = "person_id"

[datasets.big.tables.people]
file = "people.parquet"
max_rows_per_unit = 1

[datasets.big.tables.people.columns]
person_id = { type = "int64", grade = "identifier" }
id_number = { type = "string", grade = "identifier" }
income    = { type = "int64", grade = "sensitive", lower = 0, upper = 1000000 }

[datasets.big.tables.payments]
file = "payments.parquet"
max_rows_per_unit = 4

[datasets.big.tables.payments.columns]
person_id = { type = "int64", grade = "identifier" }
month     = { type = "int64", grade = "public", lower = 1, upper = 12 }

[datasets.big.verifications.paid_months_at_least]
table = "people"
subject_column = "id_number"
subject_format = "resident_id"

[datasets.big.verifications.paid_months_at_least.parameters.months]
type = "int64"
ladder = [1, 2, 3, 4]

[datasets.big.verifications.paid_months_at_least.related.months]
table = "payments"
key = "person_id"
aggregate = "count_distinct"
column = "month"

[datasets.big.verifications.paid_months_at_least.predicate]
t = "bin"
op = ">="
l = { t = "rel", name = "months" }
r = { t = "param", name = "months" }
"""

_WEIGHTS = [pow(2, 17 - k, 11) for k in range(17)]


def _first17(i: int) -> str:
    """The first 17 characters of person i's id number (as the SQL below writes them)."""
    import datetime as dt
    day = dt.date(1950, 1, 1) + dt.timedelta(days=i // 1000)
    return f"110101{day:%Y%m%d}{i % 1000:03d}"


def _big(d: Path, people: int) -> Path:
    """`people` persons with valid resident id numbers and 1-4 payment months each, written by DuckDB SQL."""
    d.mkdir(parents=True, exist_ok=True)
    first = ("'110101' || strftime(DATE '1950-01-01' + CAST(i // 1000 AS INTEGER), '%Y%m%d') "
             "|| lpad(CAST(i % 1000 AS VARCHAR), 3, '0')")
    total = " + ".join(f"CAST(substr(f, {k + 1}, 1) AS INTEGER) * {w}" for k, w in enumerate(_WEIGHTS))
    con = duckdb.connect(config={"preserve_insertion_order": False, "temp_directory": str(d / ".tmp")})
    con.execute(f"""COPY (SELECT i AS person_id, f || substr('10X98765432', CAST(({total}) % 11 AS INTEGER) + 1, 1)
                          AS id_number, CAST(hash(i, 3) % 200000 AS BIGINT) AS income
                          FROM (SELECT i, {first} AS f FROM range({people}) t(i)))
                    TO '{d / "people.parquet"}' (FORMAT parquet)""")
    con.execute(f"""COPY (SELECT i AS person_id, CAST(1 + j * 3 AS BIGINT) AS month
                          FROM range({people}) t(i), range(4) u(j) WHERE j <= i % 4)
                    TO '{d / "payments.parquet"}' (FORMAT parquet)""")
    con.close()
    (d / "catalog.toml").write_text(_CATALOG)
    return d / "catalog.toml"


@pytest.mark.slow
def test_a_template_table_beyond_the_memory_limit_is_built_by_spilling(tmp_path: Path) -> None:
    """1.5M people under a 64 MiB limit: the on-disk store's build spills, and the checks answer correctly
    (person i paid in 1 + i % 4 distinct months); the same template table cannot be built in memory even
    under 256 MiB, where the data tables fit."""
    people = 1_500_000
    catalog = load_catalog(_big(tmp_path / "data", people))
    limits = Limits(memory_limit="64MiB", query_timeout_ms=60_000)
    derived = template_tables(catalog)
    engine = Engine(catalog, limits, version_key=KEY, store_dir=tmp_path / "tables", derived=derived)
    verifier = Verifier.for_engine(engine)
    assert _tables_in(engine, "memory") == set()
    picks = [1, 2, 3, 4, 777_777, people - 1]  # sequence number 000 is not a valid id
    subjects = [_first17(i) + resident_id_check_char(_first17(i)) for i in picks]
    for months in (1, 2, 3, 4):
        reply = verifier.verify(VerifyClaimsRequest(f"q{months}", "big", "paid_months_at_least", tuple(subjects),
                                                    (("months", (months,) * len(subjects)),)))
        assert isinstance(reply, VerifyClaimsResult), reply
        assert reply.not_found == 0
        assert list(reply.outcomes) == [int(1 + i % 4 >= months) for i in picks]
    # In memory, 4 times that limit holds the data tables but not the template's table (nothing can spill).
    memory = Engine(catalog, Limits(memory_limit="256MiB", query_timeout_ms=60_000), version_key=KEY)
    with pytest.raises(duckdb.OutOfMemoryException):
        Verifier.for_engine(memory)


@pytest.mark.slow
def test_a_store_build_that_cannot_fit_even_spilling_exits_with_the_memory_line(tmp_path: Path) -> None:
    """The real sandbox process under a 16 MiB limit: its store build runs out of memory, it exits with status 2
    and one line naming the limit, the setting and a larger value, and leaves no store file."""
    catalog = _big(tmp_path / "data", 200_000)
    state = tmp_path / "state"
    done = subprocess.run(
        [sys.executable, "-m", "sandbox", "--catalog", str(catalog), "--socket", str(tmp_path / "s.sock"),
         "--storage", "disk", "--state-dir", str(state), "--memory-limit", "16MiB", "--threads", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("sandbox: the data does not fit in the memory limit 16MiB"), done.stderr
    assert "raise it to 2GiB or more" in last and "sandbox_memory_limit" in last
    assert not list((state / "tables").glob("*.duckdb"))
