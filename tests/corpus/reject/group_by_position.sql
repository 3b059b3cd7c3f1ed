-- reason: UNSUPPORTED_EXPRESSION
-- why: keys must be column names
SELECT sex, COUNT(*) FROM residents GROUP BY 1
