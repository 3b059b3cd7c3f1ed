-- reason: SQL_PARSE_FAILED
-- why: typo
SELEC COUNT(*) FROM residents
