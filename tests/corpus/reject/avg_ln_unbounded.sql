-- reason: UNBOUNDED_EXPRESSION
-- why: LN has no lower bound
SELECT AVG(LN(income)) FROM residents
