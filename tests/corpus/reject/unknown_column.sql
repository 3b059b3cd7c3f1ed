-- reason: UNKNOWN_COLUMN
-- why: not in the catalog
SELECT SUM(salary) FROM residents
