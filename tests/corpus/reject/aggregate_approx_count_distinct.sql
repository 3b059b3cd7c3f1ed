-- reason: UNSUPPORTED_AGGREGATE
-- why: approx_count_distinct is not a DP aggregate here
SELECT approx_count_distinct(income) FROM residents
