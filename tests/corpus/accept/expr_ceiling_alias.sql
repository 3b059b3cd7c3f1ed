-- why: CEILING is CEIL
SELECT SUM(CEILING(income / 1000)) FROM residents
