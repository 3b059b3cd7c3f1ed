-- why: VAR
SELECT VAR(income) FROM residents
