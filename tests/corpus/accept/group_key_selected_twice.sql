-- why: one key, two output columns
SELECT sex, sex AS s2, COUNT(*) FROM residents GROUP BY sex
