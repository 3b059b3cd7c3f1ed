-- reason: UNKNOWN_COLUMN
-- why: once aliased, the table is known by its alias
SELECT SUM(residents.income) FROM residents r
