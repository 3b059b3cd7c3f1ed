-- reason: INVALID_ALIAS
-- why: alias must be an identifier
SELECT COUNT(*) AS "weird name" FROM residents
