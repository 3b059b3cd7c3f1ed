-- why: CAST to DOUBLE
SELECT AVG(CAST(income AS DOUBLE)) FROM residents
