-- reason: INVALID_ALIAS
-- why: invisible characters in names
SELECT COUNT(*) AS "n​" FROM residents
