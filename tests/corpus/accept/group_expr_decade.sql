-- why: decade from bounded birth_year
SELECT FLOOR(birth_year / 10) * 10 AS decade, COUNT(*) FROM residents GROUP BY FLOOR(birth_year / 10) * 10
