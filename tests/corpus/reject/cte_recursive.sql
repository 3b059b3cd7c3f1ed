-- reason: UNSUPPORTED_CONSTRUCT
-- why: recursive CTEs can generate unbounded rows
WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t WHERE n < 10) SELECT COUNT(*) FROM t
