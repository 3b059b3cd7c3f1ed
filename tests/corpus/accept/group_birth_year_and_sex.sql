-- why: bounded int key and domain key
SELECT birth_year, sex, COUNT(*) FROM residents GROUP BY birth_year, sex
