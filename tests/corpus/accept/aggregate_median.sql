-- why: MEDIAN via the exponential mechanism
SELECT median(income) FROM residents
