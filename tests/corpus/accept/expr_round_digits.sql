-- why: ROUND with literal digits
SELECT SUM(ROUND(income / 1000.0, 1)) FROM residents
