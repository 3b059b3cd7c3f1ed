-- why: SUM of a CASE indicator
SELECT SUM(CASE WHEN income > 50000 THEN 1 ELSE 0 END) FROM residents
