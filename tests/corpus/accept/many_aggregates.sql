-- why: weights split over many aggregates
SELECT COUNT(*), SUM(income), AVG(income), VAR_POP(income), MEDIAN(income), MIN(birth_year), MAX(birth_year) FROM residents
