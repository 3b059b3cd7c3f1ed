-- why: MAX as the quantile 1 over the bounds
SELECT max(income) FROM residents
