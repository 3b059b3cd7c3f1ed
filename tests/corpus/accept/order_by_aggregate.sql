-- why: ORDER BY an aggregate
SELECT region, COUNT(*) FROM residents GROUP BY region ORDER BY COUNT(*)
