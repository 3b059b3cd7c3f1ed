-- reason: UNSUPPORTED_AGGREGATE
-- why: mode is not a DP aggregate here
SELECT mode(income) FROM residents
