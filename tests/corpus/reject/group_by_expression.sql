-- reason: UNSUPPORTED_EXPRESSION
-- why: keys must be column names
SELECT COUNT(*) FROM residents GROUP BY birth_year / 10
