"""Tests for the deterministic example-data generator."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from gateway.exampledata.generate import PROVINCES, generate, main
from gateway.exampledata.identifiers import (
    CREDIT_CODE_CHARSET,
    credit_code_check_char,
    is_valid_credit_code,
    is_valid_resident_id,
    org_code_check_char,
    resident_id_check_char,
)

PEOPLE = 2000
FILES = (
    "residents.parquet", "enterprises.parquet", "social_insurance.parquet", "regions.parquet"
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generate a small data set once for the module."""
    out = tmp_path_factory.mktemp("gen")
    generate(out, PEOPLE, seed=7)
    return out


def _rows(data_dir: Path, sql: str) -> list[tuple[object, ...]]:
    """Run ``sql`` with ``residents``, ``enterprises`` and ``si`` views over the files."""
    with duckdb.connect() as con:
        for view, name in zip(("residents", "enterprises", "si", "regions"), FILES, strict=True):
            path = str(data_dir / name).replace("'", "''")
            con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet('{path}')")
        return con.execute(sql).fetchall()


def test_resident_id_known_check_char() -> None:
    """The GB 11643 check character matches a published example (…002 -> X)."""
    assert resident_id_check_char("11010519491231002") == "X"
    assert is_valid_resident_id("11010519491231002X")
    assert not is_valid_resident_id("11010519491231002x")
    assert not is_valid_resident_id("110105194912310021")


def test_resident_id_check_char_against_iso7064_definition() -> None:
    """The check character satisfies the MOD 11-2 identity sum(a_i * 2^(18-i)) = 1 mod 11."""
    first17 = "44030419850717123"
    check = resident_id_check_char(first17)
    digits = [int(c) for c in first17] + [10 if check == "X" else int(check)]
    assert sum(d * pow(2, 17 - i, 11) for i, d in enumerate(digits)) % 11 == 1


def test_resident_id_rejects_bad_dates_and_input() -> None:
    """Impossible birth dates, wrong lengths and non-digits are rejected."""
    first17 = "11010519490230002"  # 30 February
    assert not is_valid_resident_id(first17 + resident_id_check_char(first17))
    assert not is_valid_resident_id("")
    with pytest.raises(ValueError):
        resident_id_check_char("1101051949123100")
    with pytest.raises(ValueError):
        resident_id_check_char("1101051949123100A")


def test_credit_code_known_check_char() -> None:
    """The commonly cited USCC 91350100M000100Y43 has check '3' and org-code check '4'."""
    assert org_code_check_char("M000100Y") == "4"
    assert credit_code_check_char("91350100M000100Y4") == "3"
    assert is_valid_credit_code("91350100M000100Y43")
    assert not is_valid_credit_code("91350100M000100Y44")
    assert not is_valid_credit_code("91350100M000100I43")  # I is not in the charset


def test_credit_code_check_char_definition() -> None:
    """Including the check character, the weighted sum is 0 mod 31 for every possible check."""
    weights = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
    for suffix in CREDIT_CODE_CHARSET:
        first17 = "9144030071526726" + suffix
        full = first17 + credit_code_check_char(first17)
        total = sum(CREDIT_CODE_CHARSET.index(c) * w for c, w in zip(first17, weights, strict=True))
        assert (total + CREDIT_CODE_CHARSET.index(full[17])) % 31 == 0


def test_generated_counts(data_dir: Path) -> None:
    """Residents are numbered 1..N and there are N//20 enterprises."""
    ((n, lo, hi, distinct),) = _rows(
        data_dir,
        "SELECT count(*), min(person_id), max(person_id), count(DISTINCT id_number) FROM residents",
    )
    assert (n, lo, hi, distinct) == (PEOPLE, 1, PEOPLE, PEOPLE)
    assert _rows(data_dir, "SELECT count(*) FROM enterprises") == [(PEOPLE // 20,)]


def test_every_resident_id_is_valid_and_consistent(data_dir: Path) -> None:
    """Each id_number is valid and agrees with sex, birth_year and region."""
    provinces = {code for code, _, _ in PROVINCES}
    rows = _rows(data_dir, "SELECT id_number, sex, birth_year, region FROM residents")
    for id_number, sex, birth_year, region in rows:
        assert isinstance(id_number, str)
        assert is_valid_resident_id(id_number), id_number
        assert sex == ("M" if int(id_number[16]) % 2 == 1 else "F")
        assert birth_year == int(id_number[6:10])
        assert 1930 <= int(id_number[6:10]) <= 2007
        assert region == id_number[:2] + "0000"
        assert region in provinces


def test_every_credit_code_is_valid(data_dir: Path) -> None:
    """Each credit code is valid, unique, and embeds a valid organization code."""
    provinces = {code for code, _, _ in PROVINCES}
    rows = _rows(data_dir, "SELECT credit_code, region, industry, status FROM enterprises")
    codes = [str(r[0]) for r in rows]
    assert len(set(codes)) == len(codes)
    for code, region, industry, status in rows:
        assert isinstance(code, str)
        assert is_valid_credit_code(code), code
        assert org_code_check_char(code[8:16]) == code[16]
        assert region == code[2:4] + "0000" and region in provinces
        assert isinstance(industry, str) and "A" <= industry <= "T"
        assert status in {"active", "revoked", "cancelled"}


def test_value_ranges(data_dir: Path) -> None:
    """Incomes, capitals, staff counts and contributions stay within their documented ranges."""
    ((inc_lo, inc_hi, zeros),) = _rows(
        data_dir, "SELECT min(income), max(income), count(*) FILTER (income = 0) FROM residents"
    )
    assert isinstance(inc_lo, int) and isinstance(inc_hi, int) and isinstance(zeros, int)
    assert inc_lo == 0 and inc_hi <= 2_000_000 and zeros > 0
    ((cap_lo, cap_hi, emp_lo, emp_hi),) = _rows(
        data_dir,
        "SELECT min(registered_capital), max(registered_capital), min(employees), "
        "max(employees) FROM enterprises",
    )
    assert isinstance(cap_lo, int) and isinstance(cap_hi, int) and 1 <= cap_lo <= cap_hi
    assert cap_hi <= 100_000
    assert isinstance(emp_lo, int) and isinstance(emp_hi, int) and 0 <= emp_lo <= emp_hi
    assert emp_hi <= 5000
    ((c_lo, c_hi),) = _rows(data_dir, "SELECT min(contribution), max(contribution) FROM si")
    assert isinstance(c_lo, int) and isinstance(c_hi, int) and 0 <= c_lo <= c_hi <= 10_000


def test_schema(data_dir: Path) -> None:
    """The Parquet files have the documented column names and types."""
    expected = {
        "residents": [
            ("person_id", "BIGINT"),
            ("id_number", "VARCHAR"),
            ("name", "VARCHAR"),
            ("birth_year", "INTEGER"),
            ("sex", "VARCHAR"),
            ("region", "VARCHAR"),
            ("income", "BIGINT"),
            ("employed", "BOOLEAN"),
        ],
        "enterprises": [
            ("credit_code", "VARCHAR"),
            ("name", "VARCHAR"),
            ("industry", "VARCHAR"),
            ("region", "VARCHAR"),
            ("registered_capital", "BIGINT"),
            ("employees", "INTEGER"),
            ("status", "VARCHAR"),
            ("founded_year", "INTEGER"),
        ],
        "si": [
            ("person_id", "BIGINT"),
            ("month", "VARCHAR"),
            ("contribution", "BIGINT"),
            ("employer_credit_code", "VARCHAR"),
            ("region", "VARCHAR"),
        ],
    }
    for view, columns in expected.items():
        described = _rows(data_dir, f"DESCRIBE {view}")
        assert [(r[0], r[1]) for r in described] == columns


def test_social_insurance_rows_belong_to_employed_residents(data_dir: Path) -> None:
    """Every contributor exists, is employed, has 1-12 consecutive 2025 months, no duplicates."""
    orphans = _rows(
        data_dir,
        "SELECT count(*) FROM si LEFT JOIN residents r USING (person_id) "
        "WHERE r.person_id IS NULL OR NOT r.employed",
    )
    assert orphans == [(0,)]
    runs = _rows(
        data_dir,
        "SELECT person_id, count(*), count(DISTINCT month), min(month), max(month) "
        "FROM si GROUP BY person_id",
    )
    assert runs
    for _, n, distinct, first, last in runs:
        assert isinstance(n, int) and isinstance(first, str) and isinstance(last, str)
        assert 1 <= n <= 12 and distinct == n
        assert first.startswith("2025-") and last.startswith("2025-")
        assert int(last[5:]) - int(first[5:]) + 1 == n  # consecutive
    employed = _rows(data_dir, "SELECT count(*) FROM residents WHERE employed")
    assert employed == [(len(runs),)]


def test_social_insurance_employers_exist(data_dir: Path) -> None:
    """Every employer_credit_code is an enterprise and the row's region is the employer's."""
    bad = _rows(
        data_dir,
        "SELECT count(*) FROM si LEFT JOIN enterprises e "
        "ON si.employer_credit_code = e.credit_code "
        "WHERE e.credit_code IS NULL OR e.region <> si.region",
    )
    assert bad == [(0,)]


def test_same_seed_gives_identical_bytes(tmp_path: Path, data_dir: Path) -> None:
    """Regenerating with the same seed and size reproduces every file byte for byte."""
    counts = generate(tmp_path, PEOPLE, seed=7)
    assert set(counts) == set(FILES)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (data_dir / name).read_bytes(), name


def test_different_seed_gives_different_data(tmp_path: Path, data_dir: Path) -> None:
    """A different seed produces different residents."""
    generate(tmp_path, PEOPLE, seed=8)
    assert (tmp_path / FILES[0]).read_bytes() != (data_dir / FILES[0]).read_bytes()


def test_tiny_data_set_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI handles 5 people (still 10 enterprises) and prints one line per file."""
    assert main(["--out", str(tmp_path), "--people", "5", "--seed", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    assert all(name in line for name, line in zip(FILES, lines, strict=True))
    assert _rows(tmp_path, "SELECT count(*) FROM enterprises") == [(10,)]
    assert _rows(tmp_path, "SELECT count(*), count(DISTINCT code) FROM regions") == [(31, 31)]
    with pytest.raises(ValueError):
        generate(tmp_path, 0)
