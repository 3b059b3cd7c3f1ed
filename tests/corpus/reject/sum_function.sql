-- reason: UNSUPPORTED_EXPRESSION
-- why: expressions inside aggregates come later
SELECT SUM(least(income, 10)) FROM residents
