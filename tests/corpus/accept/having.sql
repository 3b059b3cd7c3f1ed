-- why: HAVING is post-processing of released values
SELECT sex, COUNT(*) FROM residents GROUP BY sex HAVING COUNT(*) > 10
