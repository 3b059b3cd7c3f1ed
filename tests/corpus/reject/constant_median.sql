-- reason: CONSTANT_AGGREGATE
-- why: the median of a constant is the constant, whatever the data (the sandbox could not group by its one candidate)
SELECT MEDIAN(1) FROM residents
