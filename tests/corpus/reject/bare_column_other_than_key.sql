-- reason: BARE_COLUMN
-- why: region is not grouped
SELECT region, COUNT(*) FROM residents GROUP BY sex
