-- why: HAVING on a key
SELECT sex, COUNT(*) FROM residents GROUP BY sex HAVING sex = 'F'
