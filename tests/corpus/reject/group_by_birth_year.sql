-- reason: GROUP_KEY_NOT_PUBLIC
-- why: bounds are not a domain
SELECT birth_year, COUNT(*) FROM residents GROUP BY birth_year
