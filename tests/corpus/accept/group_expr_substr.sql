-- why: SUBSTRING of the region code
SELECT SUBSTRING(region, 1, 2) AS province, COUNT(*) FROM residents GROUP BY SUBSTRING(region, 1, 2)
