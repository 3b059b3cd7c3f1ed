-- reason: GROUP_KEY_NOT_PUBLIC
-- why: an expression over two columns
SELECT COUNT(*) FROM residents GROUP BY concat(sex, region)
