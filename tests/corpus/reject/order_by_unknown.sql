-- reason: BARE_COLUMN
-- why: ORDER BY a column that is not an output
SELECT sex, COUNT(*) FROM residents GROUP BY sex ORDER BY region
