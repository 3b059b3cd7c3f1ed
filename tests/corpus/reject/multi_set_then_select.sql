-- reason: MULTIPLE_STATEMENTS
-- why: state change before the query
SET VARIABLE x = 1; SELECT COUNT(*) FROM residents
