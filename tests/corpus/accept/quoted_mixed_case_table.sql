-- why: DuckDB matches quoted names case-insensitively too
SELECT COUNT(*) FROM "Residents"
