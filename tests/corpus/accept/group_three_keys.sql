-- why: three keys is the limit
SELECT sex, region, employed, SUM(income) FROM residents GROUP BY sex, region, employed
