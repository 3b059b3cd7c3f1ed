-- reason: BARE_COLUMN
-- why: HAVING on a non-key column
SELECT sex, COUNT(*) FROM residents GROUP BY sex HAVING income > 5
