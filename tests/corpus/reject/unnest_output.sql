-- reason: UNSUPPORTED_FUNCTION
-- why: unnest multiplies rows
SELECT unnest([1, 2, 3]), COUNT(*) FROM residents
