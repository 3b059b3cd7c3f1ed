-- reason: UNSUPPORTED_AGGREGATE
-- why: first is not a DP aggregate here
SELECT first(income) FROM residents
