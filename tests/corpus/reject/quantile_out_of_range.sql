-- reason: UNSUPPORTED_EXPRESSION
-- why: quantile must be in [0, 1]
SELECT QUANTILE_CONT(income, 1.5) FROM residents
