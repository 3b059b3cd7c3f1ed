-- reason: UNSUPPORTED_AGGREGATE
-- why: any_value is not a DP aggregate here
SELECT any_value(income) FROM residents
