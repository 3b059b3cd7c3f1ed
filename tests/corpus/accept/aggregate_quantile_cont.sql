-- why: QUANTILE_CONT with a literal quantile
SELECT quantile_cont(income, 0.5) FROM residents
