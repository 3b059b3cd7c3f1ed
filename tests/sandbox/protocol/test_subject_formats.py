"""The vectorised subject checks of a batch agree exactly with the scalar reference checks."""

from __future__ import annotations

import random

import pytest

from gateway.exampledata.identifiers import credit_code_check_char, resident_id_check_char
from sandbox.protocol.verification import (
    CREDIT_CODE_CHARSET,
    credit_code_problem,
    resident_id_problem,
    subject_problems,
)


def _residents(rnd: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        body = (f"{rnd.randint(110000, 659999)}{rnd.randint(1790, 2030)}{rnd.randint(0, 13):02d}"
                f"{rnd.randint(0, 32):02d}{rnd.randint(0, 999):03d}")
        check = resident_id_check_char(body) if rnd.random() < 0.7 else rnd.choice("0123456789XxA")
        out.append(body + check)
    return out


def _credits(rnd: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        body = "".join(rnd.choice(CREDIT_CODE_CHARSET) for _ in range(2)) + f"{rnd.randint(0, 999999):06d}"
        body += "".join(rnd.choice(CREDIT_CODE_CHARSET) for _ in range(9))
        check = credit_code_check_char(body) if rnd.random() < 0.7 else rnd.choice(CREDIT_CODE_CHARSET + "IOZ")
        out.append(body + check)
    return out


def _mangle(rnd: random.Random, xs: list[str]) -> list[str]:
    """Every kind of damage: lengths, non-digits, non-ASCII digits, leap days, sequence 000, swaps."""
    out = list(xs)
    for s in xs[: len(xs) // 3]:
        k = rnd.randrange(18)
        out.append(s[:k] + rnd.choice("0123456789XAIOZ- \u0663") + s[k + 1:])
        out.append(s[:k] + s[k + 1:])
        out.append(s + rnd.choice("0X"))
    out += ["", "X" * 18, "1" * 18, "\uff11" * 18, "11010520000229001X", "11010519000229001X",
            "110105200002290000", "11010519491231000X", "11010519491231002X", "11010519491231002x",
            "91350100M000100Y43", "9135010OM000100Y43", "91350100M000100Y4", "\x00" * 18]
    rnd.shuffle(out)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_resident_ids_vector_equals_scalar(seed: int) -> None:
    """Every message (and every acceptance) is the scalar function's."""
    rnd = random.Random(seed)
    subjects = _mangle(rnd, _residents(rnd, 3000))
    expected = {i: p for i, s in enumerate(subjects) if (p := resident_id_problem(s)) is not None}
    assert subject_problems("resident_id", subjects) == expected
    assert 0 < len(expected) < len(subjects)


@pytest.mark.parametrize("seed", range(4))
def test_credit_codes_vector_equals_scalar(seed: int) -> None:
    """Every message (and every acceptance) is the scalar function's."""
    rnd = random.Random(seed)
    subjects = _mangle(rnd, _credits(rnd, 3000))
    expected = {i: p for i, s in enumerate(subjects) if (p := credit_code_problem(s)) is not None}
    assert subject_problems("credit_code", subjects) == expected
    assert 0 < len(expected) < len(subjects)


def test_unknown_format_refuses_everything() -> None:
    """An unknown format names itself for every subject."""
    assert subject_problems("passport", ["a", "b"]) == {0: "unknown subject format 'passport'",
                                                        1: "unknown subject format 'passport'"}

