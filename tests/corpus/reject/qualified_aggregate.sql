-- reason: UNSUPPORTED_EXPRESSION
-- why: qualified function names
SELECT main.sum(income) FROM residents
