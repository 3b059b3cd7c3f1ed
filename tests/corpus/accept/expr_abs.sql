-- why: ABS of a shifted column
SELECT AVG(ABS(birth_year - 1970)) FROM residents
