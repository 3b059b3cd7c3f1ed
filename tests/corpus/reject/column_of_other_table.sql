-- reason: UNKNOWN_COLUMN
-- why: column of another table
SELECT SUM(contribution) FROM residents
