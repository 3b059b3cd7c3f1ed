-- why: duplicate keys collapse
SELECT sex, COUNT(*) FROM residents GROUP BY sex, sex
