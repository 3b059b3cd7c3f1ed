-- reason: UNSUPPORTED_EXPRESSION
-- why: quantile must be a literal
SELECT QUANTILE_CONT(income, birth_year) FROM residents
