-- reason: CROSS_JOIN
-- why: CROSS JOIN pairs every row with every row
SELECT COUNT(*) FROM residents r CROSS JOIN social_insurance s
