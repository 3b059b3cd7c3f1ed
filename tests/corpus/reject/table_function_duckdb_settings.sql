-- reason: TABLE_FUNCTION
-- why: duckdb_settings() reads outside the catalog or multiplies rows
SELECT COUNT(*) FROM duckdb_settings()
