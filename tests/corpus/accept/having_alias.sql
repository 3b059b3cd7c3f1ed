-- why: HAVING on an alias
SELECT sex, COUNT(*) AS n FROM residents GROUP BY sex HAVING n > 10
