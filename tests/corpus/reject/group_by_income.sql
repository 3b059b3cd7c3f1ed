-- reason: GROUP_KEY_NOT_PUBLIC
-- why: keys would be data values
SELECT income, COUNT(*) FROM residents GROUP BY income
