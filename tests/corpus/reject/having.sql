-- reason: UNSUPPORTED_CONSTRUCT
-- why: filters on exact aggregates
SELECT sex, COUNT(*) FROM residents GROUP BY sex HAVING COUNT(*) > 10
