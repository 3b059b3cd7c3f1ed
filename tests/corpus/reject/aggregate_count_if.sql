-- reason: UNSUPPORTED_AGGREGATE
-- why: count_if is not a DP aggregate here
SELECT count_if(employed) FROM residents
