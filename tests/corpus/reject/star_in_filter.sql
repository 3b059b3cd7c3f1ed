-- reason: UNSUPPORTED_EXPRESSION
-- why: star expression
SELECT COUNT(*) FROM residents WHERE COLUMNS('inc.*') > 0
