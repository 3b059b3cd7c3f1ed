-- reason: UNBOUNDED_COLUMN
-- why: not numeric
SELECT SUM(sex) FROM residents
