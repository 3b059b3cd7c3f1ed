-- why: partition selection on birth_year with SUM
SELECT birth_year, SUM(income) FROM residents GROUP BY birth_year
