"""The engine next to the data: locked-down DuckDB, storage, guard, watchdog, limits, the owner's cap ledger."""
