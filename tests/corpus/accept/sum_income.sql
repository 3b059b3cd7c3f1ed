-- why: bounded sensitive column
SELECT SUM(income) FROM residents
