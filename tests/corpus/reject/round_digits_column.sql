-- reason: UNSUPPORTED_EXPRESSION
-- why: ROUND digits must be a literal
SELECT SUM(ROUND(income, birth_year)) FROM residents
