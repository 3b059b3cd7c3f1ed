-- reason: UNSUPPORTED_AGGREGATE
-- why: max is not a DP aggregate here
SELECT max(income) FROM residents
