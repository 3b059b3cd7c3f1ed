"""Check characters of Chinese identifiers, as the example data generator writes them and the tests check them:
resident identity numbers (GB 11643-1999), organization codes (GB 11714-1997) and unified social credit codes
(GB 32100-2015). Written from the standards, apart from the sandbox's own checks
(`sandbox.protocol.verification.subject_problems`), so each checks the other."""

from __future__ import annotations

import datetime as dt
from typing import Final

__all__ = [
    "CREDIT_CODE_CHARSET",
    "RESIDENT_CHECK",
    "RESIDENT_WEIGHTS",
    "credit_code_check_char",
    "is_valid_credit_code",
    "is_valid_resident_id",
    "org_code_check_char",
    "resident_id_check_char",
]

# GB 11643-1999: weight of position i (0-based, left to right) is 2**(17 - i) mod 11.
RESIDENT_WEIGHTS: Final[tuple[int, ...]] = tuple(pow(2, 17 - i, 11) for i in range(17))
# Check character indexed by (weighted sum mod 11), i.e. (12 - sum) mod 11 with 10 -> 'X'.
RESIDENT_CHECK: Final[str] = "10X98765432"

#: GB 32100-2015 character set (no I, O, S, V, Z); a character's value is its index.
CREDIT_CODE_CHARSET: Final[str] = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_CREDIT_VALUES: Final[dict[str, int]] = {c: i for i, c in enumerate(CREDIT_CODE_CHARSET)}
# fmt: off
_CREDIT_WEIGHTS: Final[tuple[int, ...]] = (
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
)
# fmt: on

# GB 11714-1997 organization code: digits keep their value, letters A..Z are 10..35.
_ORG_VALUES: Final[dict[str, int]] = {c: int(c, 36) for c in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"}
_ORG_WEIGHTS: Final[tuple[int, ...]] = (3, 7, 9, 10, 5, 8, 4, 2)


def resident_id_check_char(first17: str) -> str:
    """Compute the GB 11643-1999 (ISO 7064 MOD 11-2) check character of a resident ID.

    Args:
        first17: The first 17 digits of the identity number (region, birth date, sequence).

    Returns:
        The check character, one of ``0``-``9`` or ``X``.

    Raises:
        ValueError: If ``first17`` is not exactly 17 ASCII digits.
    """
    if len(first17) != 17 or not (first17.isascii() and first17.isdigit()):
        raise ValueError(f"expected 17 ASCII digits, got {first17!r}")
    total = sum(int(c) * w for c, w in zip(first17, RESIDENT_WEIGHTS, strict=True))
    return RESIDENT_CHECK[total % 11]


def is_valid_resident_id(s: str) -> bool:
    """Tell whether ``s`` is a well-formed 18-character PRC resident identity number.

    Checks the structure (17 digits plus check character), that positions 7-14 form a real
    calendar date no earlier than 1800-01-01, that the sequence is not ``000``, and the
    check character. The region code is not checked against a list, and a lowercase ``x``
    is rejected (the standard prescribes ``X``).

    Args:
        s: The candidate identity number.

    Returns:
        True if ``s`` passes every check.
    """
    if len(s) != 18:
        return False
    first17 = s[:17]
    if not (first17.isascii() and first17.isdigit()):
        return False
    year, month, day = int(s[6:10]), int(s[10:12]), int(s[12:14])
    try:
        dt.date(year, month, day)
    except ValueError:
        return False
    if year < 1800 or s[14:17] == "000":
        return False
    return s[17] == resident_id_check_char(first17)


def org_code_check_char(first8: str) -> str:
    """Compute the GB 11714-1997 organization code check character.

    Args:
        first8: The 8-character organization code body (``0``-``9``, ``A``-``Z``).

    Returns:
        ``0``-``9`` or ``X`` (``11 - sum mod 11``, with 10 mapped to ``X`` and 11 to ``0``).

    Raises:
        ValueError: If ``first8`` is not 8 characters from ``0``-``9``/``A``-``Z``.
    """
    if len(first8) != 8 or any(c not in _ORG_VALUES for c in first8):
        raise ValueError(f"expected 8 characters from 0-9A-Z, got {first8!r}")
    check = 11 - sum(_ORG_VALUES[c] * w for c, w in zip(first8, _ORG_WEIGHTS, strict=True)) % 11
    return "X" if check == 10 else "0" if check == 11 else str(check)


def credit_code_check_char(first17: str) -> str:
    """Compute the GB 32100-2015 unified social credit code check character.

    Args:
        first17: The first 17 characters of the code, all from :data:`CREDIT_CODE_CHARSET`.

    Returns:
        The check character, ``CREDIT_CODE_CHARSET[(31 - sum mod 31) mod 31]``.

    Raises:
        ValueError: If ``first17`` is not 17 characters from the code's character set.
    """
    if len(first17) != 17 or any(c not in _CREDIT_VALUES for c in first17):
        raise ValueError(f"expected 17 characters from {CREDIT_CODE_CHARSET}, got {first17!r}")
    total = sum(_CREDIT_VALUES[c] * w for c, w in zip(first17, _CREDIT_WEIGHTS, strict=True))
    return CREDIT_CODE_CHARSET[(31 - total % 31) % 31]


def is_valid_credit_code(s: str) -> bool:
    """Tell whether ``s`` is a well-formed 18-character unified social credit code.

    Checks the length, the character set, that positions 3-8 (the region code) are digits,
    and the final check character. The embedded organization code's own check character is
    not required to be valid (registration authorities issue some codes, e.g. for
    individual businesses, whose body does not follow GB 11714); use
    :func:`org_code_check_char` for that.

    Args:
        s: The candidate credit code (uppercase).

    Returns:
        True if ``s`` passes every check.
    """
    if len(s) != 18 or any(c not in _CREDIT_VALUES for c in s):
        return False
    if not s[2:8].isdigit():
        return False
    return s[17] == credit_code_check_char(s[:17])
