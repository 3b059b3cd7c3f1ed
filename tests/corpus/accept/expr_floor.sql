-- why: FLOOR
SELECT SUM(FLOOR(income / 1000)) FROM residents
