-- reason: UNSUPPORTED_CONSTRUCT
-- why: two releases
SELECT COUNT(*) FROM residents UNION ALL SELECT COUNT(*) FROM residents
