-- why: ORDER BY position
SELECT region, COUNT(*) FROM residents GROUP BY region ORDER BY 2 DESC
