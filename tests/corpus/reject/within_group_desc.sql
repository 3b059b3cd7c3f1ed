-- reason: UNSUPPORTED_EXPRESSION
-- why: only ascending order
SELECT PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY income DESC) FROM residents
