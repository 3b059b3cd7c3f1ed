-- why: two keys, 62 groups
SELECT sex, region, COUNT(*) FROM residents GROUP BY sex, region
