-- reason: SQL_PARSE_FAILED
-- why: DuckDB's parser refuses it
SELECT COUNT(*) FROM residents WHERE 1 < income < 5
