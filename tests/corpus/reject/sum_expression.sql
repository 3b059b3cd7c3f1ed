-- reason: UNSUPPORTED_EXPRESSION
-- why: expressions inside aggregates come later
SELECT SUM(income * 2) FROM residents
