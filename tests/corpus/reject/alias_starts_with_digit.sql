-- reason: INVALID_ALIAS
-- why: alias must not start with a digit
SELECT COUNT(*) AS "1n" FROM residents
