"""The sandbox's memory settings: sizes read as DuckDB reads them, an address-space limit that follows the memory
limit, the value suggested when a load does not fit, and the automatic limit from the machine and its cgroup."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.engine.limits import (
    GIB,
    address_space_for,
    auto_memory_limit,
    cgroup_memory_limit,
    larger_memory_limit,
    physical_memory,
    resolve_memory_limit,
    size_bytes,
)


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



MIB = 1024**2


def _cgroup(tmp: Path, files: dict[str, str], own: str | None = "0::/\n") -> tuple[Path, Path]:
    """A fake cgroup file system under `tmp`: `files` (path -> content) and /proc/self/cgroup's text."""
    root = tmp / "cgroup"
    root.mkdir(parents=True)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    proc = tmp / "self-cgroup"
    if own is not None:
        proc.write_text(own)
    return root, proc


def test_no_cgroup_file_system_means_no_cgroup_limit(tmp_path: Path) -> None:
    assert cgroup_memory_limit(tmp_path / "absent", tmp_path / "absent-too") is None


def test_cgroup_v2_max_means_no_limit(tmp_path: Path) -> None:
    assert cgroup_memory_limit(*_cgroup(tmp_path, {"memory.max": "max\n"})) is None


def test_cgroup_v2_limit_is_read(tmp_path: Path) -> None:
    assert cgroup_memory_limit(*_cgroup(tmp_path, {"memory.max": f"{3 * GIB}\n"})) == 3 * GIB


def test_the_smallest_limit_of_the_own_cgroup_and_its_ancestors_binds(tmp_path: Path) -> None:
    """A parent's limit binds its children: the smallest along the path from the process's cgroup to the root."""
    files = {"memory.max": "max", "a/memory.max": f"{2 * GIB}", "a/b/memory.max": f"{6 * GIB}",
             "other/memory.max": f"{GIB}"}
    assert cgroup_memory_limit(*_cgroup(tmp_path, files, "0::/a/b\n")) == 2 * GIB


def test_cgroup_v1_limit_and_its_no_limit_value(tmp_path: Path) -> None:
    v1 = "memory/memory.limit_in_bytes"
    assert cgroup_memory_limit(*_cgroup(tmp_path / "x", {v1: f"{4 * GIB}\n"}, None)) == 4 * GIB
    assert cgroup_memory_limit(*_cgroup(tmp_path / "y", {v1: "9223372036854771712\n"}, None)) is None


def test_cgroup_v1_own_cgroup_is_found_from_proc_self_cgroup(tmp_path: Path) -> None:
    """The v1 memory controller's line names the process's cgroup under <root>/memory."""
    files = {"memory/memory.limit_in_bytes": "9223372036854771712",
             "memory/jobs/memory.limit_in_bytes": f"{5 * GIB}",
             "memory/jobs/j1/memory.limit_in_bytes": "9223372036854771712"}
    own = "4:memory:/jobs/j1\n3:cpu,cpuacct:/elsewhere\n0::/\n"
    assert cgroup_memory_limit(*_cgroup(tmp_path, files, own)) == 5 * GIB


def test_an_unreadable_value_is_no_limit(tmp_path: Path) -> None:
    assert cgroup_memory_limit(*_cgroup(tmp_path, {"memory.max": "lots\n"})) is None


@pytest.mark.parametrize(("physical", "cgroup", "expected"), [
    (23 * GIB, None, "11776MiB"),          # half the machine
    (64 * GIB, 8 * GIB, "4096MiB"),        # the container's limit is smaller: half of it
    (4 * GIB, 64 * GIB, "2048MiB"),        # a cgroup limit above the machine does not raise it
    (3 * GIB + 100 * MIB, None, "1536MiB"),  # rounded down to 64 MiB
    (1 * GIB, None, "512MiB"),             # a small machine
    (256 * MIB, None, "128MiB"),
    (100 * MIB, None, "64MiB"),            # never below 64 MiB
    (32 * MIB, 16 * MIB, "64MiB"),
])
def test_the_automatic_limit_is_half_the_smaller_of_machine_and_cgroup(
    physical: int, cgroup: int | None, expected: str,
) -> None:
    choice = auto_memory_limit(physical, cgroup)
    assert choice.memory_limit == expected
    assert size_bytes(choice.memory_limit) is not None  # DuckDB reads it
    assert "automatically" in choice.reason and "sandbox_memory_limit" in choice.reason
    assert ("and the cgroup limit" in choice.reason) == (cgroup is not None)


def test_an_explicit_setting_wins_and_auto_sizes_from_this_machine() -> None:
    explicit = resolve_memory_limit("3GiB")
    assert explicit.memory_limit == "3GiB" and "explicitly" in explicit.reason
    auto = resolve_memory_limit("auto")
    assert auto == auto_memory_limit(physical_memory(), cgroup_memory_limit())
    assert 64 * MIB <= (size_bytes(auto.memory_limit) or 0) <= physical_memory() // 2
