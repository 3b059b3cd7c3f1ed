-- reason: SUBQUERY_NOT_ON_PRIVACY_UNIT
-- why: subquery in FROM
SELECT COUNT(*) FROM (SELECT * FROM residents)
