-- reason: UNKNOWN_COLUMN
-- why: income is not a table
SELECT COUNT(*) FROM residents WHERE income.x = 1
