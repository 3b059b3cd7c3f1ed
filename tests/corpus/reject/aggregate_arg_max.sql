-- reason: UNSUPPORTED_AGGREGATE
-- why: arg_max is not a DP aggregate here
SELECT arg_max(income, birth_year) FROM residents
