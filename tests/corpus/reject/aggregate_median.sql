-- reason: UNSUPPORTED_AGGREGATE
-- why: median is not a DP aggregate here
SELECT median(income) FROM residents
