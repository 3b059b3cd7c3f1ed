-- why: top groups
SELECT region, SUM(income) AS s FROM residents GROUP BY region ORDER BY s DESC LIMIT 5
