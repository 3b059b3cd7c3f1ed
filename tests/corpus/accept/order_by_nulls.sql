-- why: NULLS FIRST
SELECT sex, AVG(income) FROM residents GROUP BY sex ORDER BY sex DESC NULLS FIRST
