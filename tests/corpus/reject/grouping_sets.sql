-- reason: UNSUPPORTED_CONSTRUCT
-- why: several groupings
SELECT COUNT(*) FROM residents GROUP BY GROUPING SETS ((sex), (region))
