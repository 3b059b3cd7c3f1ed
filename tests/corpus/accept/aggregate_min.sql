-- why: MIN as the quantile 0 over the bounds
SELECT min(income) FROM residents
