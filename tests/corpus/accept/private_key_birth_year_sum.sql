-- why: birth_year has a public integer domain from its bounds; SUM(income) over it
SELECT birth_year, SUM(income) FROM residents GROUP BY birth_year
