-- why: COALESCE with a default
SELECT SUM(COALESCE(income, 0)) FROM residents
