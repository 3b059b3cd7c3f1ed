-- reason: TOO_MANY_GROUPS
-- why: at most three keys
SELECT COUNT(*) FROM residents GROUP BY sex, region, employed, birth_year
