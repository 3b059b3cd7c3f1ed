-- reason: UNSUPPORTED_AGGREGATE
-- why: histogram is not a DP aggregate here
SELECT histogram(income) FROM residents
