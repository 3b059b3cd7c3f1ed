"""The sandbox's memory settings: sizes read as DuckDB reads them, an address-space limit that follows the memory
limit, and the value suggested when a load does not fit."""

from __future__ import annotations

import pytest

from sandbox.engine.limits import GIB, address_space_for, larger_memory_limit, size_bytes


@pytest.mark.parametrize(("text", "expected"), [
    ("2GiB", 2 * GIB), ("512MiB", 512 * 1024**2), ("8 GiB", 8 * GIB), ("1.5GB", 1_500_000_000), ("4gib", 4 * GIB),
    ("lots", None), ("GiB", None),
])
def test_sizes_read_like_duckdb(text: str, expected: int | None) -> None:
    assert size_bytes(text) == expected


def test_the_address_space_follows_the_memory_limit() -> None:
    """8 GiB up to a 3 GiB memory limit; above it twice the limit plus 2 GiB, so raising the limit alone works."""
    assert address_space_for("2GiB", 8 * GIB) == 8 * GIB
    assert address_space_for("3GiB", 8 * GIB) == 8 * GIB
    assert address_space_for("12GiB", 8 * GIB) == 26 * GIB
    assert address_space_for("whatever", 8 * GIB) == 8 * GIB


def test_the_suggestion_doubles_the_limit() -> None:
    assert larger_memory_limit("2GiB") == "4GiB"
    assert larger_memory_limit("3GiB") == "6GiB"
    assert larger_memory_limit("100MiB") == "2GiB"

