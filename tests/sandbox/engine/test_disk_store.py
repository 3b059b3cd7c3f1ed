"""The on-disk store (real DuckDB, real files): same exact aggregates as memory, read-only after the lock-down,
built once per data version, and every fault (interrupted build, corruption, failed build) ends rebuilt or clean.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from pathlib import Path

import duckdb
import pytest

from gateway.errors import InvalidQueryError
from gateway.exampledata.generate import generate
from gateway.products.query.sql.analyze import analyze
from sandbox.catalog import load_catalog
from sandbox.engine.disk_store import FORMAT, prepare_store
from sandbox.engine.engine import Engine
from sandbox.engine.limits import Limits
from sandbox.engine.storage import table_ref
from sandbox.errors import ConfigError
from sandbox.plans.compile import compile_dataset_plan
from tests.corpus.test_corpus import ACCEPT
from tests.helpers import PEOPLE

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
KEY = b"k" * 32
SALT = "fixed-salt"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("diskdata")
    generate(d, PEOPLE, seed=11)
    return d


def _engine(data_dir: Path, store: Path | None, **kw: object) -> Engine:
    catalog = load_catalog(ROOT / "policies" / "catalog.toml", data_dir)
    return Engine(catalog, Limits(query_timeout_ms=20_000), truncation_salt=SALT, version_key=KEY,
                  store_dir=store, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def pair(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, Engine, Path]:
    store = tmp_path_factory.mktemp("store")
    return _engine(data_dir, None), _engine(data_dir, store), store


def _same(a: list[tuple[object, ...]], b: list[tuple[object, ...]]) -> bool:
    if len(a) != len(b):
        return False
    for ra, rb in zip(sorted(a, key=repr), sorted(b, key=repr), strict=True):
        for x, y in zip(ra, rb, strict=True):
            if isinstance(x, float) or isinstance(y, float):
                if not math.isclose(float(x), float(y), rel_tol=1e-9, abs_tol=1e-9):  # type: ignore[arg-type]
                    return False
            elif x != y:
                return False
    return True


def _files(store: Path) -> set[str]:
    return {p.name for p in store.iterdir() if p.name != ".lock"}


def test_the_corpus_has_the_same_exact_aggregates_in_memory_and_on_disk(
    pair: tuple[Engine, Engine, Path],
) -> None:
    """Every accepted corpus query, compiled for the real catalog, gives the same exact (pre-noise) rows from
    the in-memory store and the on-disk one (same truncation salt): the storage changes nothing released."""
    memory, disk, _ = pair
    assert (memory.storage, disk.storage) == ("memory", "disk")
    assert memory.row_counts == disk.row_counts
    info = memory.describe().dataset("registry")
    assert info is not None and info == disk.describe().dataset("registry")  # same data version too
    compared = 0
    for path in ACCEPT:
        try:
            plan = analyze(path.read_text(encoding="utf-8"), info)
        except InvalidQueryError:
            continue  # written for the corpus's own catalog; this catalog refuses it
        compiled = compile_dataset_plan(plan, info, max_cells=memory.limits.max_groups)
        for sql in (compiled.sql, *(q.sql for q in compiled.quantiles)):
            got_m, got_d = memory.run_select(sql), disk.run_select(sql)
            assert _same(got_m, got_d), path.name
            compared += 1
    assert compared >= 150


def test_the_store_is_read_only_and_unreadable_as_a_file_after_the_lock_down(
    pair: tuple[Engine, Engine, Path],
) -> None:
    """The engine's own connection cannot write the store, attach it again, or read its bytes as a file; the
    file is byte-identical after queries and write attempts."""
    _, disk, store = pair
    db = next(store.glob("*.duckdb"))
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    name = table_ref("registry__residents")
    con = disk._con
    attempts = [
        f"INSERT INTO {name} SELECT * FROM {name} LIMIT 1",
        f"UPDATE {name} SET income = 0",
        f"DELETE FROM {name}",
        f"DROP TABLE {name}",
        "CREATE TABLE pgw_store.main.x (a INTEGER)",
        f"ATTACH '{db}' AS w",
        f"ATTACH '{store}/other.duckdb' AS w2",
        f"COPY (SELECT 1) TO '{store}/leak.csv'",
        f"SELECT octet_length(content) FROM read_blob('{db}')",
        f"SELECT * FROM glob('{store}/*')",
        "SET disabled_filesystems = ''",
        "SET access_mode = 'READ_WRITE'",
    ]
    for sql in attempts:
        with pytest.raises(duckdb.Error):
            con.execute(sql).fetchall()
    assert disk.verify()
    assert disk.run_select(f"SELECT count(*) FROM {name}")[0][0] == disk.row_counts["registry__residents"]
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert _files(store) == {db.name, db.with_suffix(".json").name}


def test_the_store_is_built_once_per_data_version(data_dir: Path, tmp_path: Path) -> None:
    """A second start reuses the file (same name and bytes); a changed source file is a new data version:
    a new store is built and the old one removed."""
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    store = tmp_path / "store"
    first = _engine(data, store)
    (db,) = store.glob("*.duckdb")
    stamp = db.stat().st_mtime_ns
    second = _engine(data, store)
    assert list(store.glob("*.duckdb")) == [db] and db.stat().st_mtime_ns == stamp
    assert first.describe() == second.describe()
    # a new data version: one more resident row (copied from the first) changes the file
    con = duckdb.connect()
    src = data / "residents.parquet"
    con.execute(f"COPY (SELECT * FROM read_parquet('{src}') UNION ALL "
                f"(SELECT * REPLACE (person_id + 10000000 AS person_id) FROM read_parquet('{src}') LIMIT 1)) "
                f"TO '{tmp_path / 'r.parquet'}' (FORMAT parquet)")
    con.close()
    (tmp_path / "r.parquet").replace(src)
    third = _engine(data, store)
    (db3,) = store.glob("*.duckdb")
    assert db3 != db and _files(store) == {db3.name, db3.with_suffix(".json").name}
    assert third.row_counts["registry__residents"] == first.row_counts["registry__residents"] + 1
    v1, v3 = first.describe().dataset("registry"), third.describe().dataset("registry")
    assert v1 is not None and v3 is not None and v1.version != v3.version


def test_a_corrupted_store_is_refused_with_a_clear_error_and_rebuilt(
    data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    store = tmp_path / "store"
    first = _engine(data_dir, store)
    (db,) = store.glob("*.duckdb")
    db.chmod(0o600)
    raw = bytearray(db.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 64] = b"\xa5" * 64  # a run of garbage in the middle of the data
    db.write_bytes(bytes(raw))
    with caplog.at_level(logging.ERROR, logger="sandbox.engine.disk_store"):
        again = _engine(data_dir, store)
    assert any("refusing the on-disk store" in r.getMessage() and "corrupt" in r.getMessage()
               for r in caplog.records)
    rebuilt = hashlib.sha256(db.read_bytes()).hexdigest()
    assert rebuilt != hashlib.sha256(bytes(raw)).hexdigest()
    assert json.loads(db.with_suffix(".json").read_text())["sha256"] == rebuilt
    assert again.row_counts == first.row_counts


def test_an_interrupted_build_is_never_used_and_is_cleaned_up(data_dir: Path, tmp_path: Path) -> None:
    """The leftovers of a build killed before its commit (a temp file, a spill directory, a store without its
    manifest) are removed and the store is rebuilt; nothing of them is opened."""
    store = tmp_path / "store"
    reference = _engine(data_dir, store)
    (db,) = store.glob("*.duckdb")
    manifest = db.with_suffix(".json")
    manifest.unlink()  # killed between the rename of the file and the manifest's
    (store / "tmp-0123456789abcdef.duckdb").write_bytes(b"half a database")
    (store / "spill-0123456789abcdef").mkdir()
    again = _engine(data_dir, store)
    assert _files(store) == {db.name, manifest.name}
    assert again.row_counts == reference.row_counts


def test_a_failed_build_leaves_nothing_behind(data_dir: Path, tmp_path: Path) -> None:
    """A build that fails midway (here: a source file that does not match the catalog; a full disk takes
    the same path, see tests/sandbox/process/test_disk_process.py) removes every file it made."""
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    con = duckdb.connect()
    con.execute(f"COPY (SELECT 'x' AS code) TO '{data / 'regions.parquet'}' (FORMAT parquet)")
    con.close()
    store = tmp_path / "store"
    with pytest.raises(ConfigError, match="regions"):
        _engine(data, store)
    assert _files(store) == set()


def test_a_failed_commit_removes_the_store(tmp_path: Path) -> None:
    """`prepare_store` with a loader that fails after writing rows: the exception propagates as ConfigError
    when DuckDB fails, and no file remains."""
    def load(con: duckdb.DuckDBPyConnection) -> None:
        con.execute("CREATE TABLE pgw_store.main.t AS SELECT range AS a FROM range(1000)")
        con.execute("SELECT error('boom')")

    with pytest.raises(ConfigError, match="cannot build the on-disk tables"):
        prepare_store(tmp_path, "k" * 32, Limits(), load)
    assert _files(tmp_path) == set()
    assert FORMAT >= 1
