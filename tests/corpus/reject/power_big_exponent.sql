-- reason: UNSUPPORTED_EXPRESSION
-- why: exponents are small literals
SELECT AVG(POWER(income, 50)) FROM residents
