-- reason: UNSUPPORTED_FUNCTION
-- why: state
SELECT COUNT(*) FROM residents WHERE setseed(0.1) IS NULL
