-- why: CLAMP sets the bounds
SELECT SUM(CLAMP(income, 0, 100000)) FROM residents
