-- reason: UNSUPPORTED_AGGREGATE
-- why: array_agg is not a DP aggregate here
SELECT array_agg(income) FROM residents
