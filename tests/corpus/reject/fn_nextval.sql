-- reason: UNSUPPORTED_FUNCTION
-- why: sequences
SELECT COUNT(*) FROM residents WHERE nextval('s') > 0
