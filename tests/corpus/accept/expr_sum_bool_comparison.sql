-- why: a comparison sums as 0/1
SELECT SUM(income > 100000) FROM residents
