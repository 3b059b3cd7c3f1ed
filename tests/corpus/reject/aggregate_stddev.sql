-- reason: UNSUPPORTED_AGGREGATE
-- why: stddev is not a DP aggregate here
SELECT stddev(income) FROM residents
