-- reason: MULTIPLE_STATEMENTS
-- why: execute() would run both
SELECT 1; DROP TABLE x
