-- reason: UNSUPPORTED_CONSTRUCT
-- why: FILTER comes later
SELECT COUNT(*) FILTER (WHERE sex = 'F') FROM residents
