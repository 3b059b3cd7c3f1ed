-- why: internal column with a declared domain
SELECT region, AVG(income) FROM residents GROUP BY region
