-- reason: UNSUPPORTED_CONSTRUCT
-- why: not yet supported
SELECT COUNT(*) FROM residents LIMIT 10%
