-- why: mean is AVG
SELECT mean(income) FROM residents
