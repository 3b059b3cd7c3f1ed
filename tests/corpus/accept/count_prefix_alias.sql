-- why: DuckDB prefix alias syntax
SELECT n: COUNT(*) FROM residents
