-- reason: UNSUPPORTED_AGGREGATE
-- why: quantile_cont is not a DP aggregate here
SELECT quantile_cont(income, 0.5) FROM residents
