-- why: ROUND with negative digits
SELECT AVG(ROUND(income, -3)) FROM residents
