-- reason: UNSUPPORTED_AGGREGATE
-- why: mode is not a DP aggregate
SELECT mode(sex) FROM residents
