-- reason: UNBOUNDED_EXPRESSION
-- why: MIN is an extreme quantile over the argument's bounds, and LN(income) has no lower bound (income can be 0)
SELECT MIN(LN(income)) FROM residents
