-- reason: CROSS_JOIN
-- why: cross join
SELECT COUNT(*) FROM residents, residents
