-- reason: UNSUPPORTED_CONSTRUCT
-- why: set operation
SELECT COUNT(*) FROM residents INTERSECT SELECT COUNT(*) FROM residents
