-- reason: UNSUPPORTED_AGGREGATE
-- why: string_agg is not a DP aggregate here
SELECT string_agg(sex, ',') FROM residents
