-- reason: UNBOUNDED_EXPRESSION
-- why: a cast string is unbounded
SELECT SUM(TRY_CAST(region AS BIGINT)) FROM residents
