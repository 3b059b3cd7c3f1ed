-- reason: UNBOUNDED_COLUMN
-- why: not numeric
SELECT AVG(region) FROM residents
