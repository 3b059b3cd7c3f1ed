-- reason: UNBOUNDED_EXPRESSION
-- why: quantiles need a finite candidate grid and LENGTH has no upper bound
SELECT MEDIAN(LENGTH(sex)) FROM residents
