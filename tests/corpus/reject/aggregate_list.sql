-- reason: UNSUPPORTED_AGGREGATE
-- why: list is not a DP aggregate here
SELECT list(income) FROM residents
