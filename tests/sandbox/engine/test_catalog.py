"""The data owner's catalog: valid files load, and every bad file names file, key and problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.catalog import load_catalog
from sandbox.errors import ConfigError

GOOD = """
schema = "privacy_gateway.catalog.v1"
data_dir = "data"

[datasets.registry]
description = "Resident registry"
owner = "Bureau"
privacy_unit = "person_id"

[datasets.registry.tables.residents]
file = "residents.parquet"
max_rows_per_unit = 1

[datasets.registry.tables.residents.columns]
person_id  = { type = "int64",  grade = "identifier" }
birth_year = { type = "int64",  grade = "public", lower = 1930, upper = 2007 }
sex        = { type = "string", grade = "public", domain = ["F", "M"] }
income     = { type = "int64",  grade = "sensitive", lower = 0, upper = 2000000 }
score      = { type = "float64", grade = "sensitive", lower = -1.5, upper = 2, domain = [1, 2.5] }
employed   = { type = "bool",   grade = "internal", domain = [false, true] }
"""


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "catalog.toml"
    p.write_text(text, encoding="utf-8")
    return p


def _error(tmp_path: Path, text: str) -> ConfigError:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_catalog(path)
    err = info.value
    assert err.file == str(path)
    assert str(err).startswith(f"{path}: {err.key}: ")
    return err


def test_good_catalog_loads(tmp_path: Path) -> None:
    """A valid catalog loads with resolved paths and typed column infos."""
    cat = load_catalog(_write(tmp_path, GOOD))
    ds = cat.dataset("registry")
    assert ds is not None and ds.privacy_unit == "person_id" and ds.owner == "Bureau"
    t = ds.table("residents")
    assert t is not None
    assert t.file == (tmp_path / "data" / "residents.parquet").resolve()
    assert t.info.max_rows_per_unit == 1
    income = t.info.column("income")
    assert income is not None and (income.lower, income.upper) == (0, 2_000_000)
    score = t.info.column("score")
    assert score is not None and score.domain == (1.0, 2.5)
    info = cat.public({"registry": "abc"})
    assert info.datasets[0].version == "abc"
    assert info.datasets[0].tables[0].column("employed") == t.info.column("employed")


def test_data_dir_override(tmp_path: Path) -> None:
    """The data_dir argument overrides the file's data_dir."""
    cat = load_catalog(_write(tmp_path, GOOD), data_dir=tmp_path / "elsewhere")
    t = cat.datasets[0].tables[0]
    assert t.file == (tmp_path / "elsewhere" / "residents.parquet").resolve()


K = "datasets.registry.tables.residents"
C = f"{K}.columns"

BAD_CASES = [
    ("schema", GOOD.replace('catalog.v1"', 'catalog.v9"'), "schema", "must be"),
    ("unknown top key", GOOD.replace('data_dir = "data"', 'data_dir = "data"\nextra = 1'),
     "extra", "unknown key"),
    ("missing K", GOOD.replace("max_rows_per_unit = 1\n", ""), f"{K}.max_rows_per_unit",
     "missing"),
    ("zero K", GOOD.replace("max_rows_per_unit = 1", "max_rows_per_unit = 0"),
     f"{K}.max_rows_per_unit", ">= 1"),
    ("bool K", GOOD.replace("max_rows_per_unit = 1", "max_rows_per_unit = true"),
     f"{K}.max_rows_per_unit", "integer"),
    ("unit not a column", GOOD.replace('privacy_unit = "person_id"', 'privacy_unit = "nobody"'),
     "datasets.registry.privacy_unit", "not a column"),
    ("missing unit", GOOD.replace('privacy_unit = "person_id"\n', ""),
     "datasets.registry.privacy_unit", "missing"),
    ("bad type", GOOD.replace('sex        = { type = "string"', 'sex        = { type = "text"'),
     f"{C}.sex.type", "must be one of"),
    ("bad grade", GOOD.replace('grade = "internal"', 'grade = "secret"'), f"{C}.employed.grade",
     "must be one of"),
    ("lower only", GOOD.replace("lower = 0, upper = 2000000", "lower = 0"), f"{C}.income.upper",
     "together"),
    ("lower > upper", GOOD.replace("lower = 0, upper = 2000000", "lower = 5, upper = 1"),
     f"{C}.income.lower", "must not exceed"),
    ("inf bound", GOOD.replace("lower = -1.5, upper = 2", "lower = -1.5, upper = inf"),
     f"{C}.score.upper", "finite"),
    ("float bound on int", GOOD.replace("lower = 0, upper = 2000000", "lower = 0.5, upper = 9"),
     f"{C}.income.lower", "integer"),
    ("bounds on string", GOOD.replace('domain = ["F", "M"]', 'lower = 0, upper = 1'),
     f"{C}.sex.lower", "numeric"),
    ("empty domain", GOOD.replace('domain = ["F", "M"]', "domain = []"), f"{C}.sex.domain",
     "non-empty"),
    ("duplicate domain", GOOD.replace('domain = ["F", "M"]', 'domain = ["F", "F"]'),
     f"{C}.sex.domain", "distinct"),
    ("domain type", GOOD.replace('domain = ["F", "M"]', 'domain = ["F", 1]'),
     f"{C}.sex.domain[1]", "not a valid string"),
    ("bool domain type", GOOD.replace("domain = [false, true]", "domain = [0, 1]"),
     f"{C}.employed.domain[0]", "not a valid bool"),
    ("unknown column key", GOOD.replace('grade = "internal"', 'grade = "internal", min = 0'),
     f"{C}.employed.min", "unknown key"),
    ("file outside data_dir", GOOD.replace('"residents.parquet"', '"../../etc/passwd.csv"'),
     f"{K}.file", "relative"),
    ("file type", GOOD.replace('"residents.parquet"', '"residents.json"'), f"{K}.file",
     "parquet"),
    ("bad dataset name", GOOD.replace("registry", "reg__istry"), "datasets.reg__istry",
     "letters"),
    ("reserved column", GOOD.replace("employed  ", "__pgw_rn  "), f"{C}.__pgw_rn", "reserved"),
    ("no columns", GOOD.split("[datasets.registry.tables.residents.columns]")[0]
     + "[datasets.registry.tables.residents.columns]\n", f"{C}", "at least one"),
]


@pytest.mark.parametrize(("text", "key", "problem"), [c[1:] for c in BAD_CASES],
                         ids=[c[0] for c in BAD_CASES])
def test_bad_catalog_names_file_key_problem(
    tmp_path: Path, text: str, key: str, problem: str
) -> None:
    """Each invalid catalog raises ConfigError naming the file, the dotted key and the problem."""
    err = _error(tmp_path, text)
    assert err.key == key
    assert problem in err.problem


def test_domain_too_large(tmp_path: Path) -> None:
    """A domain with more than 10,000 values is refused."""
    values = ", ".join(str(i) for i in range(10_001))
    text = GOOD.replace("lower = 1930, upper = 2007", f"domain = [{values}]")
    err = _error(tmp_path, text)
    assert err.key == f"{C}.birth_year.domain" and "10000" in err.problem


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    """A missing file and a TOML syntax error are ConfigErrors too."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_catalog(tmp_path / "missing.toml")
    assert "TOML" in _error(tmp_path, "schema = [").problem


def test_data_dir_required_without_override(tmp_path: Path) -> None:
    """Without data_dir in the file or the argument, loading fails on key data_dir."""
    err = _error(tmp_path, GOOD.replace('data_dir = "data"\n', ""))
    assert err.key == "data_dir"


SECOND_TABLE = """
[datasets.registry.tables.insurance]
file = "insurance.parquet"
max_rows_per_unit = 12

[datasets.registry.tables.insurance.columns]
person_id = {{ type = "{unit_type}", grade = "identifier" }}
amount    = {{ type = "int64", grade = "sensitive", lower = 0, upper = 100 }}
"""


def test_privacy_unit_has_one_type_across_tables(tmp_path: Path) -> None:
    """A unit column declared int64 in one table and string in another is refused at load (a unit join
    would cast one to the other and fail on some values only, an error that depends on the data)."""
    err = _error(tmp_path, GOOD + SECOND_TABLE.format(unit_type="string"))
    assert err.key == "datasets.registry.tables.insurance.columns.person_id.type"
    assert err.problem == ("the privacy unit 'person_id' is string here but int64 in table 'residents'; "
                           "every table must declare it with the same type")
    cat = load_catalog(_write(tmp_path, GOOD + SECOND_TABLE.format(unit_type="int64")))
    assert [t.name for t in cat.datasets[0].tables] == ["residents", "insurance"]


def test_shipped_catalog_declares_one_unit_type_per_dataset() -> None:
    """The shipped catalog loads, and each dataset's unit column has one type in all its private tables."""
    from gateway.settings import ROOT

    cat = load_catalog(ROOT / "policies" / "catalog.toml")
    for ds in cat.datasets:
        types = {t.info.column(ds.privacy_unit).type for t in ds.tables  # type: ignore[union-attr]
                 if not t.info.public}
        assert len(types) == 1, ds.name
