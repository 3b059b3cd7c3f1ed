-- reason: UNSUPPORTED_EXPRESSION
-- why: IN values must be literals
SELECT COUNT(*) FROM residents WHERE 1990 IN (birth_year, 1)
