-- reason: UNSUPPORTED_FUNCTION
-- why: hash
SELECT SUM(CLAMP(hash(income), 0, 1)) FROM residents
