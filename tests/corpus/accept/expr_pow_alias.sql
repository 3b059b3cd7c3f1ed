-- why: POW is POWER
SELECT AVG(POW(birth_year - 1970, 3)) FROM residents
