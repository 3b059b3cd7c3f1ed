-- reason: UNSUPPORTED_AGGREGATE
-- why: last is not a DP aggregate here
SELECT last(income) FROM residents
