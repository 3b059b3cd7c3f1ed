-- why: modulo by a literal
SELECT SUM(birth_year % 10) FROM residents
