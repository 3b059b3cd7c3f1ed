-- reason: UNSUPPORTED_EXPRESSION
-- why: modulo by zero would depend on data
SELECT COUNT(*) FROM residents WHERE income % birth_year = 0
