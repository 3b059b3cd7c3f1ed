-- why: keys need not be selected
SELECT COUNT(*) FROM residents GROUP BY sex
