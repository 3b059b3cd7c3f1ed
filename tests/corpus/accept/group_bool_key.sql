-- why: boolean domain key
SELECT employed, COUNT(*) FROM residents GROUP BY employed
