-- reason: UNSUPPORTED_EXPRESSION
-- why: CLAMP bounds must be ordered
SELECT SUM(CLAMP(income, 10, 0)) FROM residents
