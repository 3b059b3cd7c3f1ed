-- why: STDDEV from count, sum and sum of squares
SELECT stddev(income) FROM residents
