-- reason: UNSUPPORTED_EXPRESSION
-- why: CLAMP bounds must be literals
SELECT SUM(CLAMP(income, 0, birth_year)) FROM residents
