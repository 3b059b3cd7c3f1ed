-- why: MEDIAN per group
SELECT region, MEDIAN(income) FROM residents GROUP BY region
