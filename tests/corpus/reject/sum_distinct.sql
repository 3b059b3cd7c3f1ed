-- reason: UNSUPPORTED_CONSTRUCT
-- why: distinct sums
SELECT SUM(DISTINCT income) FROM residents
