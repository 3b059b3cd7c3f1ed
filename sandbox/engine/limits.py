"""Resource limits of the sandbox process (set by the data owner on the command line).

The memory limit is the data owner's explicit setting, or, when it is `auto` (the default), chosen from the
machine (`auto_memory_limit`): half of the memory the process can have, the smaller of the machine's
physical memory and its cgroup's limit (`cgroup_memory_limit`: cgroup v2 `memory.max` or cgroup v1
`memory.limit_in_bytes` of the process's own cgroup and each ancestor), rounded down to 64 MiB, at least 64 MiB.
The other half stays for the rest of the process (Python, OpenDP, the query results), the gateway next to
it and the operating system's page cache, which serves the on-disk store's blocks. The data's size does not
enter: with the on-disk store the data may be many times the limit (DuckDB spills while building and reads
blocks on demand while serving), and a smaller limit than the machine allows only slows large queries.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

GIB = 1024**3
MIB = 1024**2
AUTO = "auto"
AUTO_FRACTION = 2  # the automatic limit is 1/AUTO_FRACTION of the memory available
AUTO_STEP = 64 * MIB  # ... rounded down to this, and at least this
_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a huge number (PAGE_COUNTER_MAX pages)
_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def size_bytes(text: str) -> int | None:
    """`'2GiB'`, `'512MB'`, `'8 GiB'` in bytes (DuckDB's units); None for anything else (DuckDB decides)."""
    t = text.strip().lower().replace(" ", "")
    for unit in sorted(_UNITS, key=len, reverse=True):
        if t.endswith(unit):
            try:
                return int(float(t[: -len(unit)]) * _UNITS[unit])
            except ValueError:
                return None
    return None


def address_space_for(memory_limit: str, default: int) -> int:
    """The process's address-space limit for a DuckDB `memory_limit`: `default`, or twice the memory limit plus
    2 GiB (OpenDP, Python, DuckDB's own overhead) when that is larger, so raising the memory limit alone works."""
    limit = size_bytes(memory_limit)
    return default if limit is None else max(default, 2 * limit + 2 * GIB)


def larger_memory_limit(memory_limit: str) -> str:
    """What to suggest when loading ran out of `memory_limit`: twice as much, in GiB."""
    limit = size_bytes(memory_limit) or 2 * GIB
    return f"{max(2, -(-2 * limit // GIB))}GiB"


def human_bytes(n: int) -> str:
    """`n` bytes for a log line: '23.4 GiB', '512 MiB'."""
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / MIB:.0f} MiB"


def _read_limit(path: Path) -> int | None:
    """A cgroup memory limit file's value in bytes; None for 'max', a v1 'no limit', absent or unreadable."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit():
        return None  # 'max' (cgroup v2: no limit)
    value = int(text)
    return value if 0 < value < _UNLIMITED else None


def _lineage(root: Path, rel: str) -> list[Path]:
    """`root/rel` and each of its ancestors up to `root`."""
    path = Path(rel.strip().lstrip("/"))
    return [root / p for p in (path, *path.parents) if str(p) != "."]


def cgroup_memory_limit(root: Path = Path("/sys/fs/cgroup"), own: Path = Path("/proc/self/cgroup")) -> int | None:
    """The smallest memory limit of the cgroups this process is in (None: none, or no cgroup file system).

    A parent's limit binds its children, so every cgroup from the process's own (named in `own`, i.e.
    /proc/self/cgroup) up to the root counts: cgroup v2 `<root>/<path>/memory.max` (line `0::<path>`),
    cgroup v1 `<root>/memory/<path>/memory.limit_in_bytes` (line `<n>:memory:<path>`). The roots themselves
    count too (inside a container they are the container's own cgroup).
    """
    v2, v1 = [root], [root / "memory"]
    try:
        for line in own.read_text().splitlines():
            parts = line.split(":", 2)
            if len(parts) != 3:
                continue
            if parts[0] == "0" and parts[1] == "":
                v2 += _lineage(root, parts[2])
            elif "memory" in parts[1].split(","):
                v1 += _lineage(root / "memory", parts[2])
    except OSError:
        pass
    found = [v for v in (*(_read_limit(d / "memory.max") for d in v2),
                         *(_read_limit(d / "memory.limit_in_bytes") for d in v1)) if v is not None]
    return min(found) if found else None


def physical_memory() -> int:
    """The machine's physical memory in bytes."""
    return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))


@dataclass(frozen=True, slots=True)
class MemoryChoice:
    """A memory limit and why it is what it is (for the sandbox's start-up log line)."""

    memory_limit: str
    reason: str


def auto_memory_limit(physical: int, cgroup: int | None) -> MemoryChoice:
    """The automatic memory limit on a machine with `physical` bytes in a cgroup limited to `cgroup` bytes.

    Half of the smaller of the two, rounded down to 64 MiB and at least 64 MiB, in MiB (DuckDB's binary units).
    """
    available = physical if cgroup is None else min(physical, cgroup)
    limit = max(AUTO_STEP, available // AUTO_FRACTION // AUTO_STEP * AUTO_STEP)
    source = (f"physical memory {human_bytes(physical)}, no cgroup limit" if cgroup is None else
              f"the smaller of physical memory {human_bytes(physical)} and the cgroup limit {human_bytes(cgroup)}")
    reason = (f"chosen automatically: half of {human_bytes(available)} ({source}), rounded down to 64 MiB; "
              "set sandbox_memory_limit (--memory-limit) to choose another")
    return MemoryChoice(f"{limit // MIB}MiB", reason)


def resolve_memory_limit(setting: str) -> MemoryChoice:
    """`setting` as given, or the automatic limit for this machine when it is `auto` (or empty)."""
    if setting.strip().lower() in (AUTO, ""):
        return auto_memory_limit(physical_memory(), cgroup_memory_limit())
    return MemoryChoice(setting, "set explicitly (sandbox_memory_limit / --memory-limit)")


@dataclass(frozen=True, slots=True)
class Limits:
    """Limits the sandbox enforces on itself.

    Attributes:
        memory_limit: DuckDB `memory_limit` (binary units, e.g. '2GiB'); nothing spills to disk while serving
            (an on-disk store's build spills to its own private directory, `sandbox.engine.disk_store`).
        threads: DuckDB worker threads.
        query_timeout_ms: per-query deadline: DuckDB `max_execution_time` plus a watchdog interrupt.
        max_groups: most cells (product of group-key domain sizes) a plan may ask for.
        address_space_bytes: RLIMIT_AS for the whole sandbox process; 0 leaves it unset.
        exact_cache_values: most exact aggregate values kept for re-noising repeated plans
            (`sandbox.engine.exact_cache`); 0 disables it.
    """

    memory_limit: str = "2GiB"
    threads: int = 2
    query_timeout_ms: int = 10_000
    max_groups: int = 100_000
    address_space_bytes: int = 8 * GIB
    exact_cache_values: int = 1_000_000

    def __post_init__(self) -> None:
        if not self.memory_limit or any(c in self.memory_limit for c in "'\"\\;\x00"):
            raise ValueError("memory_limit must be a size such as '2GiB'")
        if self.threads < 1:
            raise ValueError("threads must be at least 1")
        if self.query_timeout_ms < 1:
            raise ValueError("query_timeout_ms must be at least 1")
        if self.max_groups < 1:
            raise ValueError("max_groups must be at least 1")
        if self.exact_cache_values < 0:
            raise ValueError("exact_cache_values must be >= 0 (0 = no cache)")
        if self.address_space_bytes < 0:
            raise ValueError("address_space_bytes must be >= 0 (0 = no limit)")
