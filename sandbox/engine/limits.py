"""Resource limits of the sandbox process (set by the data owner on the command line)."""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3
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
