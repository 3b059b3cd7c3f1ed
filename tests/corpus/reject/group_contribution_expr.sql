-- reason: GROUP_KEY_NOT_PUBLIC
-- why: contribution bounds span too many integers
SELECT COUNT(*) FROM social_insurance GROUP BY contribution % 7
