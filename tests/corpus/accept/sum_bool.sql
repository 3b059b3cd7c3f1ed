-- why: booleans sum as 0/1
SELECT SUM(employed) FROM residents
