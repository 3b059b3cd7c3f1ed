-- reason: SCALAR_SUBQUERY
-- why: subquery in GROUP BY
SELECT COUNT(*) FROM residents GROUP BY (SELECT 1)
