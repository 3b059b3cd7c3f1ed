-- reason: UNSUPPORTED_EXPRESSION
-- why: division by zero would depend on data
SELECT COUNT(*) FROM residents WHERE income / (birth_year - 1980) > 1
