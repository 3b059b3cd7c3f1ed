-- why: CEIL
SELECT SUM(CEIL(income / 1000)) FROM residents
