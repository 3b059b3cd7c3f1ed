-- reason: UNSUPPORTED_CONSTRUCT
-- why: window functions
SELECT sex, COUNT(*) FROM residents GROUP BY sex HAVING SUM(COUNT(*)) OVER () > 0
