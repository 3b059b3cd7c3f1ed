-- reason: UNSUPPORTED_EXPRESSION
-- why: aggregates in WHERE
SELECT COUNT(*) FROM residents WHERE SUM(income) > 0
