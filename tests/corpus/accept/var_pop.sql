-- why: VAR_POP
SELECT VAR_POP(income) FROM residents
