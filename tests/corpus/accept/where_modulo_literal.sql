-- why: modulo by a non-zero literal
SELECT COUNT(*) FROM residents WHERE birth_year % 10 = 0
