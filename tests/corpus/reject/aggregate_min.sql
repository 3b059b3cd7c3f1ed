-- reason: UNSUPPORTED_AGGREGATE
-- why: min is not a DP aggregate here
SELECT min(income) FROM residents
