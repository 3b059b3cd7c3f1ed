-- why: POWER with a literal exponent
SELECT AVG(POWER(birth_year - 1970, 2)) FROM residents
