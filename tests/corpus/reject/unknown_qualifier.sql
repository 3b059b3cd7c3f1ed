-- reason: UNKNOWN_COLUMN
-- why: x is not the table's alias
SELECT SUM(x.income) FROM residents r
