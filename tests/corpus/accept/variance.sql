-- why: VARIANCE
SELECT VARIANCE(birth_year) FROM residents
