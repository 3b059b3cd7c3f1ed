"""Storage contracts and their SQLite implementation: ledger, governance state, the storage reserve."""
