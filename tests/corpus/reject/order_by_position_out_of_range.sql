-- reason: UNSUPPORTED_EXPRESSION
-- why: position beyond the outputs
SELECT sex, COUNT(*) FROM residents GROUP BY sex ORDER BY 3
