-- why: DuckDB FROM-first syntax
FROM residents SELECT COUNT(*)
