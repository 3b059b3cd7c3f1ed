-- reason: UNBOUNDED_EXPRESSION
-- why: LENGTH has no upper bound
SELECT SUM(LENGTH(sex)) FROM residents
