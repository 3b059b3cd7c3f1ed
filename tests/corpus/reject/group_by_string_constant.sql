-- reason: CONSTANT_GROUP_KEY
-- why: a constant key makes one group of every row
SELECT COUNT(*) FROM residents GROUP BY 'all'
