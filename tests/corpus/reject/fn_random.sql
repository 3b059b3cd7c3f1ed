-- reason: UNSUPPORTED_FUNCTION
-- why: volatile
SELECT COUNT(*) FROM residents WHERE random() < 0.5
