-- reason: GROUP_KEY_NOT_PUBLIC
-- why: an expression over a column without a domain
SELECT COUNT(*) FROM residents GROUP BY income / 1000
