-- reason: UNSUPPORTED_CONSTRUCT
-- why: renames catalog columns
SELECT COUNT(*) FROM residents AS r(a, b)
