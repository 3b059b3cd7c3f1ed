-- why: public domain key
SELECT sex, COUNT(*) FROM residents GROUP BY sex
