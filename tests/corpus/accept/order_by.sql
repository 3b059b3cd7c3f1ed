-- why: ORDER BY is post-processing
SELECT sex, COUNT(*) FROM residents GROUP BY sex ORDER BY sex
