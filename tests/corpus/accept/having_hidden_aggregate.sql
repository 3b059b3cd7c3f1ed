-- why: HAVING on an unselected aggregate
SELECT region, COUNT(*) FROM residents GROUP BY region HAVING AVG(income) > 50000
