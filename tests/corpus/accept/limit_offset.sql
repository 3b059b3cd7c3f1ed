-- why: LIMIT with OFFSET
SELECT region, COUNT(*) FROM residents GROUP BY region ORDER BY region LIMIT 10 OFFSET 5
