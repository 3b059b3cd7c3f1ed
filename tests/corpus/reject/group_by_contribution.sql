-- reason: GROUP_KEY_NOT_PUBLIC
-- why: keys would be data values
SELECT COUNT(*) FROM social_insurance GROUP BY contribution
