-- why: COUNT of an expression
SELECT COUNT(NULLIF(income, 0)) FROM residents
