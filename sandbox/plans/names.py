"""The names the sandbox gives its stored tables, shared by the engine that loads them and every SQL producer
that reads them (the plan compiler, the verification and model executors): pure string rules, no DuckDB."""

from __future__ import annotations

__all__ = ["STORE", "sql_table_name", "table_ref"]

STORE = "pgw_store"  # the attached database holding every loaded table (sandbox.engine.storage)


def sql_table_name(dataset: str, table: str) -> str:
    """The DuckDB table holding `dataset.table` (names cannot contain '__', so this is unique)."""
    return f"{dataset}__{table}"


def table_ref(name: str) -> str:
    """The SQL reference of the stored table `name`: `pgw_store.main."name"`."""
    if "\x00" in name:
        raise ValueError("table name contains NUL")
    return f'{STORE}.main."' + name.replace('"', '""') + '"'
