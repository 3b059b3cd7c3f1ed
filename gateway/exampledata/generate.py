"""Deterministic generator of synthetic PRC resident, enterprise and social-insurance registries."""

from __future__ import annotations

import argparse
import calendar
import csv
import datetime as dt
import math
import random
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import duckdb

from gateway.exampledata.identifiers import (
    CREDIT_CODE_CHARSET,
    RESIDENT_CHECK,
    RESIDENT_WEIGHTS,
    credit_code_check_char,
    org_code_check_char,
)

__all__ = [
    "PROVINCES",
    "generate",
    "main",
]

# --------------------------------------------------------------------------------------------
# Reference data
# --------------------------------------------------------------------------------------------

#: The 31 mainland province-level divisions (GB/T 2260 code, short name, 2020 census millions).
PROVINCES: Final[tuple[tuple[str, str, float], ...]] = (
    ("110000", "北京", 21.9),
    ("120000", "天津", 13.9),
    ("130000", "河北", 74.6),
    ("140000", "山西", 34.9),
    ("150000", "内蒙古", 24.0),
    ("210000", "辽宁", 42.6),
    ("220000", "吉林", 24.1),
    ("230000", "黑龙江", 31.9),
    ("310000", "上海", 24.9),
    ("320000", "江苏", 84.7),
    ("330000", "浙江", 64.6),
    ("340000", "安徽", 61.0),
    ("350000", "福建", 41.5),
    ("360000", "江西", 45.2),
    ("370000", "山东", 101.5),
    ("410000", "河南", 99.4),
    ("420000", "湖北", 57.8),
    ("430000", "湖南", 66.4),
    ("440000", "广东", 126.0),
    ("450000", "广西", 50.1),
    ("460000", "海南", 10.1),
    ("500000", "重庆", 32.1),
    ("510000", "四川", 83.7),
    ("520000", "贵州", 38.6),
    ("530000", "云南", 47.2),
    ("540000", "西藏", 3.6),
    ("610000", "陕西", 39.5),
    ("620000", "甘肃", 25.0),
    ("630000", "青海", 5.9),
    ("640000", "宁夏", 7.2),
    ("650000", "新疆", 25.9),
)

_MUNICIPALITIES: Final[frozenset[str]] = frozenset({"11", "12", "31", "50"})

# fmt: off
_SURNAMES: Final[tuple[tuple[str, float], ...]] = (
    ("王", 7.1), ("李", 7.0), ("张", 6.8), ("刘", 5.4), ("陈", 4.6), ("杨", 3.1), ("黄", 2.5),
    ("赵", 2.3), ("吴", 2.0), ("周", 1.9), ("徐", 1.4), ("孙", 1.4), ("马", 1.3), ("朱", 1.3),
    ("胡", 1.2), ("郭", 1.2), ("何", 1.0), ("林", 1.0), ("高", 1.0), ("罗", 0.9), ("郑", 0.9),
    ("梁", 0.9), ("谢", 0.7), ("宋", 0.6), ("唐", 0.6), ("许", 0.6), ("韩", 0.6), ("冯", 0.5),
    ("邓", 0.5), ("曹", 0.5), ("彭", 0.5), ("曾", 0.5), ("肖", 0.5), ("田", 0.4), ("董", 0.4),
    ("潘", 0.4), ("袁", 0.4), ("蔡", 0.4), ("蒋", 0.4), ("余", 0.4), ("于", 0.4), ("杜", 0.4),
    ("叶", 0.4), ("程", 0.3), ("魏", 0.3), ("苏", 0.3), ("吕", 0.3), ("丁", 0.3), ("任", 0.3),
    ("卢", 0.3), ("姚", 0.3), ("沈", 0.3), ("钟", 0.3), ("姜", 0.3), ("崔", 0.3), ("谭", 0.3),
    ("陆", 0.3), ("范", 0.2), ("汪", 0.2), ("廖", 0.2), ("石", 0.2), ("金", 0.2), ("韦", 0.2),
    ("贾", 0.2), ("夏", 0.2), ("付", 0.2), ("方", 0.2), ("欧阳", 0.05), ("司马", 0.01),
)
# fmt: on

_GIVEN_CHARS: Final[str] = (
    "伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红鹏辉建国志海燕波宁"
    "文斌欣怡梓涵子轩浩宇雨欣思博俊晨晓婷雪琳佳慧嘉颖家豪天佑瑞鑫诗源"
)

#: GB/T 4754-2017 sections: (code, trade word used in generated names, relative frequency).
_INDUSTRIES: Final[tuple[tuple[str, str, float], ...]] = (
    ("A", "农业科技", 3.0),
    ("B", "矿业", 0.5),
    ("C", "制造", 12.0),
    ("D", "能源", 1.0),
    ("E", "建设工程", 7.0),
    ("F", "商贸", 30.0),
    ("G", "物流", 4.0),
    ("H", "餐饮管理", 3.0),
    ("I", "信息技术", 7.0),
    ("J", "投资管理", 1.5),
    ("K", "房地产开发", 2.5),
    ("L", "商务咨询", 12.0),
    ("M", "科技", 8.0),
    ("N", "环保科技", 1.0),
    ("O", "家政服务", 2.0),
    ("P", "教育科技", 1.5),
    ("Q", "医疗管理", 1.0),
    ("R", "文化传媒", 3.0),
    ("S", "社会服务", 0.4),
    ("T", "国际交流", 0.01),
)

# fmt: off
_BRANDS: Final[tuple[str, ...]] = (
    "华信", "宏达", "鑫源", "恒泰", "金鼎", "瑞丰", "天成", "中联", "新世纪", "东方", "远景",
    "嘉禾", "博雅", "盛世", "永安", "汇通", "联创", "启明", "德润", "佳和", "万达", "海纳",
    "星辰", "锦程", "振华", "鸿运", "润泽", "卓越", "安泰", "同创", "华宇", "康源", "兴业",
    "长青", "盈科", "致远", "明德", "立信", "广厦", "云帆",
)
# fmt: on

_STATUSES: Final[tuple[tuple[str, float], ...]] = (
    ("active", 0.86),
    ("revoked", 0.06),
    ("cancelled", 0.08),
)

_FIRST_BIRTH_YEAR: Final = 1930
_LAST_BIRTH_YEAR: Final = 2007
_REFERENCE_YEAR: Final = 2025
_MAX_INCOME: Final = 2_000_000
_MAX_CONTRIBUTION: Final = 10_000

RESIDENTS_FILE: Final = "residents.parquet"
ENTERPRISES_FILE: Final = "enterprises.parquet"
SOCIAL_INSURANCE_FILE: Final = "social_insurance.parquet"
REGIONS_FILE: Final = "regions.parquet"

#: Macro-region of a province by the first digit of its GB/T 2260 code (public lookup data).
MACRO_REGIONS: Final[dict[str, str]] = {
    "1": "North", "2": "Northeast", "3": "East", "4": "South Central", "5": "Southwest",
    "6": "Northwest",
}

# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def _digit_sum(digits: str, offset: int) -> int:
    """Return the GB 11643 weighted sum of ``digits`` placed at ``offset`` in the ID."""
    return sum(int(c) * RESIDENT_WEIGHTS[offset + i] for i, c in enumerate(digits))


def _county_codes(province_code: str) -> list[str]:
    """Return synthetic (well-shaped, not necessarily real) county-level codes of a province."""
    prefix = province_code[:2]
    cities = range(1, 2) if prefix in _MUNICIPALITIES else range(1, 10)
    counties = range(1, 17) if prefix in _MUNICIPALITIES else range(1, 13)
    return [f"{prefix}{city:02d}{county:02d}" for city in cities for county in counties]


def _birth_year_weight(year: int) -> float:
    """Return the relative frequency of a birth year (a rough 2020s age pyramid)."""
    weight = 1.0
    if year < 1950:
        weight = 0.05 + 0.95 * (year - _FIRST_BIRTH_YEAR) / 20
    if 1962 <= year <= 1975:
        weight *= 1.4
    if 1985 <= year <= 1991:
        weight *= 1.2
    return weight


def _employment_rate(birth_year: int) -> float:
    """Return the probability that a resident born in ``birth_year`` is employed."""
    age = _REFERENCE_YEAR - birth_year
    if age < 23:
        return 0.35
    if age < 60:
        return 0.78
    if age < 65:
        return 0.35
    return 0.05


def _cumulative(weights: Sequence[float]) -> list[float]:
    """Return the running sums of ``weights`` (for ``random.choices(cum_weights=...)``)."""
    out: list[float] = []
    total = 0.0
    for w in weights:
        total += w
        out.append(total)
    return out


@dataclass
class _Residents:
    """Columns of the generated residents plus what the later tables need."""

    id_numbers: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    incomes: list[int] = field(default_factory=list)
    employed: list[bool] = field(default_factory=list)
    provinces: list[int] = field(default_factory=list)


@dataclass
class _Enterprises:
    """Columns of the generated enterprises."""

    credit_codes: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    industries: list[str] = field(default_factory=list)
    regions: list[str] = field(default_factory=list)
    capitals: list[int] = field(default_factory=list)
    employees: list[int] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    founded_years: list[int] = field(default_factory=list)
    provinces: list[int] = field(default_factory=list)


@dataclass
class _Contributions:
    """One row per employed resident; expanded to one row per month in SQL."""

    person_ids: list[int] = field(default_factory=list)
    first_months: list[int] = field(default_factory=list)
    month_counts: list[int] = field(default_factory=list)
    bases: list[int] = field(default_factory=list)
    employers: list[str] = field(default_factory=list)
    regions: list[str] = field(default_factory=list)


_PROVINCE_CUM: Final[list[float]] = _cumulative([p[2] for p in PROVINCES])


def _gen_residents(rng: random.Random, people: int) -> _Residents:
    """Draw ``people`` residents with unique, valid identity numbers."""
    counties = [[(c, _digit_sum(c, 0)) for c in _county_codes(p[0])] for p in PROVINCES]
    years = list(range(_FIRST_BIRTH_YEAR, _LAST_BIRTH_YEAR + 1))
    dates: dict[int, list[tuple[str, int]]] = {}
    for year in years:
        n_days = 366 if calendar.isleap(year) else 365
        first = dt.date(year, 1, 1).toordinal()
        strs = [dt.date.fromordinal(first + d).strftime("%Y%m%d") for d in range(n_days)]
        dates[year] = [(s, _digit_sum(s, 6)) for s in strs]
    seq_strs = [f"{s:03d}" for s in range(1000)]
    seq_sums = [_digit_sum(s, 14) for s in seq_strs]
    employment = {y: _employment_rate(y) for y in years}

    given = list(_GIVEN_CHARS) + [a + b for a in _GIVEN_CHARS for b in _GIVEN_CHARS]
    n_chars = len(_GIVEN_CHARS)
    # About a quarter of given names have a single character.
    single_weight = (len(given) - n_chars) / 3 / n_chars
    given_cum = _cumulative([single_weight] * n_chars + [1.0] * (len(given) - n_chars))

    provinces = rng.choices(range(len(PROVINCES)), cum_weights=_PROVINCE_CUM, k=people)
    birth_years = rng.choices(
        years, cum_weights=_cumulative([_birth_year_weight(y) for y in years]), k=people
    )
    surnames = rng.choices(
        [s for s, _ in _SURNAMES], cum_weights=_cumulative([w for _, w in _SURNAMES]), k=people
    )
    given_names = rng.choices(given, cum_weights=given_cum, k=people)

    out = _Residents(provinces=provinces)
    seen: set[str] = set()
    rand, gauss = rng.random, rng.gauss
    for i in range(people):
        county, county_sum = (c := counties[provinces[i]])[int(rand() * len(c))]
        year = birth_years[i]
        date, date_sum = (d := dates[year])[int(rand() * len(d))]
        while True:
            seq = 1 + int(rand() * 999)  # 001..999; odd: male, even: female
            first17 = county + date + seq_strs[seq]
            if first17 not in seen:
                break
        seen.add(first17)
        check = RESIDENT_CHECK[(county_sum + date_sum + seq_sums[seq]) % 11]
        out.id_numbers.append(first17 + check)
        out.names.append(surnames[i] + given_names[i])
        is_employed = rand() < employment[year]
        if is_employed:
            income = math.exp(11.0 + 0.65 * gauss())  # median about 60k yuan a year
        elif rand() < 0.45:
            income = 0.0
        else:
            income = math.exp(9.6 + 0.9 * gauss())  # pensions, transfers, casual work
        out.incomes.append(min(_MAX_INCOME, round(income)))
        out.employed.append(is_employed)
    return out


def _gen_enterprises(rng: random.Random, count: int) -> _Enterprises:
    """Draw ``count`` enterprises with unique, valid unified social credit codes."""
    counties = [_county_codes(p[0]) for p in PROVINCES]
    provinces = rng.choices(range(len(PROVINCES)), cum_weights=_PROVINCE_CUM, k=count)
    industries = rng.choices(
        range(len(_INDUSTRIES)), cum_weights=_cumulative([x[2] for x in _INDUSTRIES]), k=count
    )
    statuses = rng.choices(
        [s for s, _ in _STATUSES], cum_weights=_cumulative([w for _, w in _STATUSES]), k=count
    )
    letters = CREDIT_CODE_CHARSET[10:]
    out = _Enterprises(provinces=provinces, statuses=statuses)
    seen: set[str] = set()
    for i in range(count):
        province = provinces[i]
        county = (c := counties[province])[rng.randrange(len(c))]
        while True:
            # Most organization codes are numeric; some start with a letter.
            body = f"{rng.randrange(100_000_000):08d}"
            if rng.random() < 0.2:
                body = rng.choice(letters) + body[1:]
            first17 = "91" + county + body + org_code_check_char(body)
            if first17 not in seen:
                break
        seen.add(first17)
        industry, trade, _ = _INDUSTRIES[industries[i]]
        out.credit_codes.append(first17 + credit_code_check_char(first17))
        out.names.append(f"{PROVINCES[province][1]}{rng.choice(_BRANDS)}{trade}有限公司")
        out.industries.append(industry)
        out.regions.append(PROVINCES[province][0])
        out.capitals.append(max(1, min(100_000, round(rng.lognormvariate(5.5, 1.6)))))
        staff = 0 if rng.random() < 0.08 else round(rng.lognormvariate(2.5, 1.4))
        out.employees.append(min(5000, staff))
        out.founded_years.append(_REFERENCE_YEAR - min(45, int(rng.expovariate(0.1))))
    return out


def _gen_contributions(
    rng: random.Random, residents: _Residents, enterprises: _Enterprises
) -> _Contributions:
    """Draw one contribution run (consecutive months of 2025) per employed resident."""
    eligible = [i for i, s in enumerate(enterprises.statuses) if s == "active"]
    if not eligible:  # only possible for tiny data sets
        eligible = list(range(len(enterprises.statuses)))
    by_province: list[list[int]] = [[] for _ in PROVINCES]
    for i in eligible:
        by_province[enterprises.provinces[i]].append(i)

    out = _Contributions()
    rand = rng.random
    for i, is_employed in enumerate(residents.employed):
        if not is_employed:
            continue
        if rand() < 0.65:
            first, months = 1, 12
        else:
            months = 1 + int(rand() * 11)  # 1..11
            first = 1 + int(rand() * (13 - months))  # the run ends by December
        local = by_province[residents.provinces[i]]
        pool = local if local and rand() < 0.85 else eligible
        employer = pool[int(rand() * len(pool))]
        # Contribution base: monthly income clamped to [4000, 30000]; about 30% of it is paid.
        base = min(30_000.0, max(4_000.0, residents.incomes[i] / 12))
        out.person_ids.append(i + 1)
        out.first_months.append(first)
        out.month_counts.append(months)
        out.bases.append(round(base * 0.3))
        out.employers.append(enterprises.credit_codes[employer])
        out.regions.append(enterprises.regions[employer])
    return out


def _sql_path(path: Path) -> str:
    """Quote ``path`` as a SQL string literal."""
    return "'" + str(path).replace("'", "''") + "'"


def _load(
    con: duckdb.DuckDBPyConnection,
    table: str,
    columns: Sequence[tuple[str, str]],
    rows: Iterable[Sequence[object]],
    staging: Path,
) -> None:
    """Create temporary table ``table`` from ``rows`` (staged as CSV, which loads fastest).

    Args:
        con: The DuckDB connection.
        table: Name of the temporary table to create.
        columns: ``(name, SQL type)`` of each column, in row order.
        rows: The rows; booleans are written as ``True``/``False``.
        staging: Scratch directory for the CSV file.
    """
    path = staging / f"{table}.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    spec = ", ".join(f"'{name}': '{sql_type}'" for name, sql_type in columns)
    con.execute(
        f"CREATE TEMP TABLE {table} AS SELECT * FROM read_csv({_sql_path(path)}, "
        f"header = false, delim = ',', quote = '\"', escape = '\"', columns = {{{spec}}})"
    )
    path.unlink()


def _copy(con: duckdb.DuckDBPyConnection, query: str, path: Path) -> int:
    """Write the rows of ``query`` to ``path`` as Parquet and return how many were written."""
    con.execute(f"COPY ({query}) TO {_sql_path(path)} (FORMAT parquet, COMPRESSION zstd)")
    row = con.execute(f"SELECT count(*) FROM read_parquet({_sql_path(path)})").fetchone()
    assert row is not None
    return int(row[0])


_RESIDENTS_SQL: Final = """
SELECT person_id,
       id_number,
       name,
       CAST(substr(id_number, 7, 4) AS INTEGER) AS birth_year,
       CASE WHEN CAST(substr(id_number, 17, 1) AS INTEGER) % 2 = 1 THEN 'M' ELSE 'F' END AS sex,
       substr(id_number, 1, 2) || '0000' AS region,
       income,
       employed
FROM residents
ORDER BY person_id
"""

# Bases are adjusted by 3% in July; a small deterministic jitter varies the months.
_SOCIAL_INSURANCE_SQL: Final = f"""
SELECT person_id,
       '2025-' || lpad(CAST(m AS VARCHAR), 2, '0') AS month,
       CAST(least({_MAX_CONTRIBUTION}, greatest(0,
            base * (CASE WHEN m >= 7 THEN 103 ELSE 100 END) // 100
            + ((person_id * 7 + m * 13) % 11 - 5) * 10)) AS BIGINT) AS contribution,
       employer_credit_code,
       region
FROM (SELECT *, unnest(range(first_month, first_month + months)) AS m FROM contribution_runs)
ORDER BY person_id, m
"""


def generate(out_dir: Path, people: int, seed: int = 7) -> dict[str, int]:
    """Generate the three example registries as Parquet files in ``out_dir``.

    The output depends only on ``people``, ``seed`` and the DuckDB version: the same inputs
    give byte-identical files (one thread, explicit ``ORDER BY``).

    Args:
        out_dir: Directory to write into; created if missing. Existing files are replaced.
        people: Number of residents (at least 1). About ``people // 20`` enterprises (at
            least 10) are generated.
        seed: Seed of the ``random.Random`` that draws every value.

    Returns:
        Mapping from file name to the number of rows written.

    Raises:
        ValueError: If ``people`` is less than 1.
    """
    if people < 1:
        raise ValueError(f"people must be at least 1, got {people}")
    rng = random.Random(seed)
    res = _gen_residents(rng, people)
    ent = _gen_enterprises(rng, max(10, people // 20))
    con_runs = _gen_contributions(rng, res, ent)

    out_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp, duckdb.connect() as con:
        staging = Path(tmp)
        con.execute("SET threads = 1")
        con.execute("SET preserve_insertion_order = true")

        _load(
            con,
            "residents",
            [
                ("person_id", "BIGINT"),
                ("id_number", "VARCHAR"),
                ("name", "VARCHAR"),
                ("income", "BIGINT"),
                ("employed", "BOOLEAN"),
            ],
            zip(
                range(1, people + 1),
                res.id_numbers,
                res.names,
                res.incomes,
                res.employed,
                strict=True,
            ),
            staging,
        )
        counts[RESIDENTS_FILE] = _copy(con, _RESIDENTS_SQL, out_dir / RESIDENTS_FILE)

        _load(
            con,
            "enterprises",
            [
                ("credit_code", "VARCHAR"),
                ("name", "VARCHAR"),
                ("industry", "VARCHAR"),
                ("region", "VARCHAR"),
                ("registered_capital", "BIGINT"),
                ("employees", "INTEGER"),
                ("status", "VARCHAR"),
                ("founded_year", "INTEGER"),
            ],
            zip(
                ent.credit_codes,
                ent.names,
                ent.industries,
                ent.regions,
                ent.capitals,
                ent.employees,
                ent.statuses,
                ent.founded_years,
                strict=True,
            ),
            staging,
        )
        counts[ENTERPRISES_FILE] = _copy(
            con, "SELECT * FROM enterprises ORDER BY credit_code", out_dir / ENTERPRISES_FILE
        )

        _load(
            con,
            "contribution_runs",
            [
                ("person_id", "BIGINT"),
                ("first_month", "INTEGER"),
                ("months", "INTEGER"),
                ("base", "BIGINT"),
                ("employer_credit_code", "VARCHAR"),
                ("region", "VARCHAR"),
            ],
            zip(
                con_runs.person_ids,
                con_runs.first_months,
                con_runs.month_counts,
                con_runs.bases,
                con_runs.employers,
                con_runs.regions,
                strict=True,
            ),
            staging,
        )
        counts[SOCIAL_INSURANCE_FILE] = _copy(
            con, _SOCIAL_INSURANCE_SQL, out_dir / SOCIAL_INSURANCE_FILE
        )

        # The public lookup table: one row per province (code is unique).
        _load(
            con,
            "regions",
            [("code", "VARCHAR"), ("name", "VARCHAR"), ("macro_region", "VARCHAR")],
            ((code, name, MACRO_REGIONS[code[0]]) for code, name, _ in PROVINCES),
            staging,
        )
        counts[REGIONS_FILE] = _copy(
            con, "SELECT * FROM regions ORDER BY code", out_dir / REGIONS_FILE
        )
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command-line interface.

    Args:
        argv: Arguments without the program name; defaults to ``sys.argv[1:]``.

    Returns:
        The process exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m gateway.exampledata.generate",
        description="Generate deterministic synthetic registries as Parquet files.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--people", type=int, required=True, help="number of residents")
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    args = parser.parse_args(argv)
    if args.people < 1:
        parser.error("--people must be at least 1")
    out_dir: Path = args.out
    for name, rows in generate(out_dir, args.people, args.seed).items():
        path = out_dir / name
        print(f"{path}: {rows:,} rows, {path.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
