-- why: SIGN
SELECT SUM(SIGN(birth_year - 1980)) FROM residents
