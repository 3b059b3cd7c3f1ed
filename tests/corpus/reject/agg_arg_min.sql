-- reason: UNSUPPORTED_AGGREGATE
-- why: arg_min releases a value
SELECT arg_min(income, birth_year) FROM residents
