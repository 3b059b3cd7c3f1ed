-- why: MEDIAN of an expression
SELECT MEDIAN(CLAMP(income, 0, 200000)) FROM residents
