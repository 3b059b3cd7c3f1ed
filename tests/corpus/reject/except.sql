-- reason: UNSUPPORTED_CONSTRUCT
-- why: set operation
SELECT COUNT(*) FROM residents EXCEPT SELECT COUNT(*) FROM residents
