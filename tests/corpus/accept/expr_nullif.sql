-- why: NULLIF
SELECT AVG(NULLIF(income, 0)) FROM residents
