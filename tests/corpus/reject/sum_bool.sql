-- reason: UNBOUNDED_COLUMN
-- why: not numeric
SELECT SUM(employed) FROM residents
