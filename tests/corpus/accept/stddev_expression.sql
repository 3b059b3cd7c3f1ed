-- why: STDDEV of an expression
SELECT STDDEV(income / 1000.0) FROM residents
