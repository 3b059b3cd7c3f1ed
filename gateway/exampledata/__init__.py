"""The synthetic example registry (`generate`) the shipped catalog describes, and the check digits of its
identifiers (`identifiers`): what `pgw serve --dev`, `pgw example-data` and the demo load, and what the tests
and benchmarks generate at every size. Imports only DuckDB (to write Parquet)."""
