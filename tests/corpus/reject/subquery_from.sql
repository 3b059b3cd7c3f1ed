-- reason: UNSUPPORTED_CONSTRUCT
-- why: subquery in FROM
SELECT COUNT(*) FROM (SELECT * FROM residents)
